namespace JobRunner;

/// <summary>Settings of one registered workload.</summary>
public sealed class WorkloadOptions
{
    /// <summary>Gets or sets the retry strategy; a job's <see cref="JobRequest.Retry"/> overrides it.</summary>
    /// <value>The default value is <see langword="null"/>: <see cref="JobRunnerOptions.DefaultRetry"/>.</value>
    public IRetryStrategy? Retry { get; set; }

    /// <summary>Gets the classifier that decides which failures are transient; add rules to it.</summary>
    /// <value>The default classifier retries every failure except a non-transient <see cref="JobRunnerException"/>.</value>
    public FailureClassifier Classifier { get; } = new();

    /// <summary>Gets or sets the attempt timeout; a job's <see cref="JobRequest.Timeout"/> overrides it.</summary>
    /// <value>The default value is <see langword="null"/>: <see cref="JobRunnerOptions.DefaultTimeout"/>.</value>
    public TimeSpan? Timeout { get; set; }

    /// <summary>Gets or sets whether a submit must carry an input.</summary>
    /// <value>The default value is <see langword="null"/>: required when the workload derives from <see cref="Workload{TInput}"/> or <see cref="Workload{TInput, TCheckpoint}"/>.</value>
    public bool? RequiresInput { get; set; }
}
