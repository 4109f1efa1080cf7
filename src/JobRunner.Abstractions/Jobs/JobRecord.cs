namespace JobRunner;

/// <summary>A snapshot of a job as a store holds it.</summary>
public sealed record JobRecord
{
    /// <summary>Gets the job's id.</summary>
    public required JobId Id { get; init; }

    /// <summary>Gets the request the job was submitted with.</summary>
    public required JobRequest Request { get; init; }

    /// <summary>Gets the job's state.</summary>
    public required JobState State { get; init; }

    /// <summary>Gets when the job was submitted.</summary>
    public required DateTimeOffset CreatedAt { get; init; }

    /// <summary>Gets when the job last changed.</summary>
    public required DateTimeOffset UpdatedAt { get; init; }

    /// <summary>Gets when a <see cref="JobState.Scheduled"/> job becomes ready.</summary>
    public DateTimeOffset? DueAt { get; init; }

    /// <summary>Gets the attempts so far, oldest first.</summary>
    public IReadOnlyList<JobAttempt> Attempts { get; init; } = [];

    /// <summary>Gets the last checkpoint any attempt saved.</summary>
    public ReadOnlyMemory<byte>? Checkpoint { get; init; }

    /// <summary>Gets the progress the running (or last) attempt reported.</summary>
    public JobProgress? Progress { get; init; }

    /// <summary>Gets the highest fence token granted for this job; 0 before the first lease.</summary>
    public long FenceToken { get; init; }

    /// <summary>Gets whether a cancellation was requested while an attempt ran.</summary>
    public bool CancelRequested { get; init; }

    /// <summary>Gets the reason given when cancellation was requested.</summary>
    public string? CancelReason { get; init; }

    /// <summary>Gets the error of the last failed attempt.</summary>
    public string? LastError { get; init; }

    /// <summary>Gets the job's id (shortcut for <see cref="JobRequest.Workload"/>).</summary>
    public string Workload => Request.Workload;

    /// <summary>Gets the job's tenant (shortcut for <see cref="JobRequest.Tenant"/>).</summary>
    public string Tenant => Request.Tenant;

    /// <summary>Gets the job's priority (shortcut for <see cref="JobRequest.Priority"/>).</summary>
    public int Priority => Request.Priority;
}
