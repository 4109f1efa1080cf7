namespace JobRunner;

/// <summary>How one attempt of a job ended.</summary>
public enum AttemptOutcome
{
    /// <summary>The workload returned normally.</summary>
    Succeeded = 0,

    /// <summary>The workload threw, or its process exited with a failure.</summary>
    Failed = 1,

    /// <summary>The attempt ran past the job's timeout.</summary>
    TimedOut = 2,

    /// <summary>The job was cancelled while this attempt ran.</summary>
    Cancelled = 3,

    /// <summary>The worker shut down gracefully and released the lease; the job runs again from its last checkpoint.</summary>
    Interrupted = 4,

    /// <summary>The lease expired without a heartbeat (the worker or its host crashed); the job was taken back.</summary>
    LeaseExpired = 5,
}

/// <summary>Helpers for <see cref="AttemptOutcome"/>.</summary>
public static class AttemptOutcomeExtensions
{
    /// <summary>Whether an attempt that ended with <paramref name="outcome"/> counts as a failure toward the job's retry limit.</summary>
    /// <param name="outcome">How the attempt ended.</param>
    /// <returns>
    /// <see langword="true"/> for <see cref="AttemptOutcome.Failed"/>, <see cref="AttemptOutcome.TimedOut"/> and
    /// <see cref="AttemptOutcome.LeaseExpired"/>; a cancellation or a graceful interruption is not a failure.
    /// </returns>
    public static bool IsFailure(this AttemptOutcome outcome) => outcome is AttemptOutcome.Failed or AttemptOutcome.TimedOut or AttemptOutcome.LeaseExpired;
}
