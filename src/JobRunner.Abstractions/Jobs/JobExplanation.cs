namespace JobRunner;

/// <summary>Why a job is not running.</summary>
public enum WaitReason
{
    /// <summary>It is not waiting: it runs or it finished.</summary>
    NotWaiting = 0,

    /// <summary>It waits for its not-before time or a retry back-off (<see cref="JobRecord.DueAt"/>).</summary>
    NotBefore = 1,

    /// <summary>It waits in the queue; no worker has taken it into its scheduler yet.</summary>
    Queued = 2,

    /// <summary>Jobs of a higher priority are ahead of it.</summary>
    HigherPriority = 3,

    /// <summary>Its tenant used its share of the priority band; other tenants go first.</summary>
    OverTenantShare = 4,

    /// <summary>A concurrency limit is reached (<see cref="JobExplanation.Limit"/> says which).</summary>
    ConcurrencyLimit = 5,

    /// <summary>Every execution slot is busy.</summary>
    NoFreeSlot = 6,

    /// <summary>A rate limit's bucket is empty (<see cref="JobExplanation.Limit"/> says which).</summary>
    RateLimited = 7,

    /// <summary>
    /// No worker that holds it may run it: it lacks a required label or has an avoided one (see
    /// <see cref="JobRequest.Affinity"/>). <see cref="JobExplanation.Limit"/> names the term, e.g. <c>gpu=true</c> or <c>!spot</c>.
    /// </summary>
    NoCapableWorker = 8,

    /// <summary>
    /// The worker that holds it lacks a preferred label; it waits for the scheduler's preference wait so that a worker
    /// with the label gets the first chance. <see cref="JobExplanation.Limit"/> names the term, e.g. <c>zone=eu?</c>.
    /// </summary>
    PreferredWorker = 9,
}

/// <summary>Why a waiting job is not running.</summary>
/// <param name="JobId">The job.</param>
/// <param name="Reason">The reason.</param>
/// <param name="Message">A human-readable explanation.</param>
/// <param name="Limit">The limit that holds it back, e.g. <c>tenant:acme=2</c> for
/// <see cref="WaitReason.ConcurrencyLimit"/>, or the affinity term for <see cref="WaitReason.NoCapableWorker"/> and
/// <see cref="WaitReason.PreferredWorker"/>.</param>
public sealed record JobExplanation(JobId JobId, WaitReason Reason, string Message, string? Limit = null);
