namespace JobRunner;

/// <summary>
/// The right of one worker to run one attempt of a job. Every write of the attempt carries the lease; a store rejects a
/// write whose <see cref="FenceToken"/> is no longer the job's current one with <see cref="StaleFenceTokenException"/>.
/// </summary>
/// <param name="JobId">The job.</param>
/// <param name="WorkerId">The worker holding the lease.</param>
/// <param name="FenceToken">A token higher than any granted before it.</param>
/// <param name="Attempt">The attempt number the lease was granted for.</param>
/// <param name="ExpiresAt">When the lease lapses unless renewed.</param>
public sealed record JobLease(JobId JobId, string WorkerId, long FenceToken, int Attempt, DateTimeOffset ExpiresAt);
