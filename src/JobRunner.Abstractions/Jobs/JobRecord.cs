namespace JobRunner;

/// <summary>A snapshot of a job as a store holds it.</summary>
public sealed record JobRecord
{
    // The fields most jobs never set (a due time, a checkpoint, progress, a cancellation, an error) live in one object
    // created on first use, so a snapshot of a plain job is about half the size. Changed by copy, never in place:
    // snapshots made with "with" share it only until one of them sets such a field.
    private Details? _details;

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
    public DateTimeOffset? DueAt
    {
        get => _details?.DueAt;
        init
        {
            if (_details is not null || value is not null)
            {
                Keep((_details ?? Details.None) with { DueAt = value });
            }
        }
    }

    /// <summary>Gets the attempts so far, oldest first.</summary>
    public IReadOnlyList<JobAttempt> Attempts { get; init; } = [];

    /// <summary>Gets the last checkpoint any attempt saved.</summary>
    public ReadOnlyMemory<byte>? Checkpoint
    {
        get => _details?.Checkpoint;
        init
        {
            if (_details is not null || value is not null)
            {
                Keep((_details ?? Details.None) with { Checkpoint = value });
            }
        }
    }

    /// <summary>Gets the progress the running (or last) attempt reported.</summary>
    public JobProgress? Progress
    {
        get => _details?.Progress;
        init
        {
            if (_details is not null || value is not null)
            {
                Keep((_details ?? Details.None) with { Progress = value });
            }
        }
    }

    /// <summary>Gets the highest fence token granted for this job; 0 before the first lease.</summary>
    public long FenceToken { get; init; }

    /// <summary>Gets whether a cancellation was requested while an attempt ran.</summary>
    public bool CancelRequested
    {
        get => _details?.CancelRequested ?? false;
        init
        {
            if (_details is not null || value)
            {
                Keep((_details ?? Details.None) with { CancelRequested = value });
            }
        }
    }

    /// <summary>Gets the reason given when cancellation was requested.</summary>
    public string? CancelReason
    {
        get => _details?.CancelReason;
        init
        {
            if (_details is not null || value is not null)
            {
                Keep((_details ?? Details.None) with { CancelReason = value });
            }
        }
    }

    /// <summary>Gets the error of the last failed attempt.</summary>
    public string? LastError
    {
        get => _details?.LastError;
        init
        {
            if (_details is not null || value is not null)
            {
                Keep((_details ?? Details.None) with { LastError = value });
            }
        }
    }

    /// <summary>Gets the job's id (shortcut for <see cref="JobRequest.Workload"/>).</summary>
    public string Workload => Request.Workload;

    /// <summary>Gets the job's tenant (shortcut for <see cref="JobRequest.Tenant"/>).</summary>
    public string Tenant => Request.Tenant;

    /// <summary>Gets the job's priority (shortcut for <see cref="JobRequest.Priority"/>).</summary>
    public int Priority => Request.Priority;

    /// <summary>Keeps changed details; none at all when every field is back at its default, so that equal records compare equal.</summary>
    private void Keep(Details details) => _details = details == Details.None ? null : details;

    private sealed record Details
    {
        public static readonly Details None = new();

        public DateTimeOffset? DueAt { get; init; }

        public ReadOnlyMemory<byte>? Checkpoint { get; init; }

        public JobProgress? Progress { get; init; }

        public bool CancelRequested { get; init; }

        public string? CancelReason { get; init; }

        public string? LastError { get; init; }
    }
}
