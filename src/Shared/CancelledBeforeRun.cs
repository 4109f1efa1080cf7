// Compiled into each package with a job store (Core's in-memory store, PostgreSQL): the one shape of the event a store
// publishes for a job it cancelled before it ran, which the worker tells apart from a running job's request by its state.
// One source, no public type.
namespace JobRunner;

/// <summary>The <see cref="JobEventKind.CancellationRequested"/> event of a job cancelled before it ran.</summary>
internal static class CancelledBeforeRun
{
    /// <summary>
    /// Creates the event: the job's state change (state <see cref="JobState.Cancelled"/>), told as a cancellation so that
    /// a worker that holds a delivery of the job, and listens for cancellations only, drops it at once.
    /// </summary>
    /// <param name="cancelled">The job as the cancellation left it.</param>
    /// <param name="previousState">Queued or Scheduled.</param>
    /// <param name="reason">Why, as recorded.</param>
    /// <returns>The event.</returns>
    public static JobEvent Event(JobRecord cancelled, JobState previousState, string? reason)
        => JobEvent.StateChanged(cancelled, previousState, reason) with { Kind = JobEventKind.CancellationRequested };
}
