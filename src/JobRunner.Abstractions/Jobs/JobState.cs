namespace JobRunner;

/// <summary>The state of a job. <c>Queued → Scheduled → Running → Succeeded | Failed | Cancelled</c>.</summary>
public enum JobState
{
    /// <summary>Ready to run, waiting for a slot.</summary>
    Queued = 0,

    /// <summary>Waiting for its not-before time or for a retry back-off to pass. Holds no slot.</summary>
    Scheduled = 1,

    /// <summary>An attempt holds a lease and is running.</summary>
    Running = 2,

    /// <summary>Finished: the last attempt succeeded.</summary>
    Succeeded = 3,

    /// <summary>Finished: a permanent failure, a timeout, or the retries ran out.</summary>
    Failed = 4,

    /// <summary>Finished: cancelled through <see cref="IJobClient.CancelAsync"/>.</summary>
    Cancelled = 5,
}

/// <summary>Helpers for <see cref="JobState"/>.</summary>
public static class JobStateExtensions
{
    /// <summary>Whether a job in <paramref name="state"/> is finished and will not change again on its own.</summary>
    /// <param name="state">The state to test.</param>
    /// <returns><see langword="true"/> for <see cref="JobState.Succeeded"/>, <see cref="JobState.Failed"/> and <see cref="JobState.Cancelled"/>.</returns>
    public static bool IsTerminal(this JobState state) => state >= JobState.Succeeded;
}
