using System.Text.Json;

namespace JobRunner;

/// <summary>Defaults that apply to every workload unless it sets its own.</summary>
public sealed class JobRunnerOptions
{
    /// <summary>Gets or sets the retry strategy of workloads that set none.</summary>
    /// <value>The default value is exponential back-off from 1 second, at most 5 attempts, at most 5 minutes apart, with jitter.</value>
    public IRetryStrategy DefaultRetry { get; set; } = RetryPolicy.Exponential(TimeSpan.FromSeconds(1), maxAttempts: 5, maxDelay: TimeSpan.FromMinutes(5));

    /// <summary>Gets or sets the attempt timeout of workloads and jobs that set none.</summary>
    /// <value>The default value is <see langword="null"/>: no timeout.</value>
    public TimeSpan? DefaultTimeout { get; set; }

    /// <summary>Gets or sets the serializer options for typed inputs and checkpoints.</summary>
    /// <value>The default value is <see cref="JsonSerializerOptions.Web"/>.</value>
    public JsonSerializerOptions SerializerOptions { get; set; } = JsonSerializerOptions.Web;
}
