using Microsoft.Extensions.Logging;

namespace JobRunner;

/// <summary>The package's log messages, source-generated.</summary>
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "Worker {WorkerId} started with {Slots} slots.")]
    public static partial void WorkerStarted(ILogger logger, string workerId, int slots);

    [LoggerMessage(2, LogLevel.Information, "Worker {WorkerId} stopped.")]
    public static partial void WorkerStopped(ILogger logger, string workerId);

    [LoggerMessage(3, LogLevel.Information, "Worker {WorkerId} is stopping: {Running} attempts get {Grace} to checkpoint and finish.")]
    public static partial void ShuttingDown(ILogger logger, string workerId, int running, TimeSpan grace);

    [LoggerMessage(4, LogLevel.Error, "Taking jobs from the queue failed; retrying in 1 second.")]
    public static partial void QueueFailed(ILogger logger, Exception exception);

    [LoggerMessage(5, LogLevel.Error, "Running job {JobId} failed inside the worker.")]
    public static partial void SlotFailed(ILogger logger, JobId jobId, Exception exception);

    [LoggerMessage(6, LogLevel.Warning, "Job {JobId}: the lease with fence token {FenceToken} was lost; the attempt stopped without writing its outcome.")]
    public static partial void LeaseLost(ILogger logger, JobId jobId, long fenceToken);

    [LoggerMessage(7, LogLevel.Warning, "Job {JobId}: the outcome was rejected because the lease is stale.")]
    public static partial void CompletionRejected(ILogger logger, JobId jobId, Exception exception);

    [LoggerMessage(8, LogLevel.Information, "Job {JobId}: cancelling the running attempt ({Reason}).")]
    public static partial void CancellingAttempt(ILogger logger, JobId jobId, string? reason);

    [LoggerMessage(9, LogLevel.Error, "Renewing leases failed; retrying at the next heartbeat.")]
    public static partial void HeartbeatFailed(ILogger logger, Exception exception);

    [LoggerMessage(10, LogLevel.Error, "Reclaiming expired leases failed; retrying at the next sweep.")]
    public static partial void ReclaimFailed(ILogger logger, Exception exception);

    [LoggerMessage(11, LogLevel.Warning, "Job {JobId}: its lease expired without a heartbeat; it was queued again.")]
    public static partial void Reclaimed(ILogger logger, JobId jobId);

    [LoggerMessage(12, LogLevel.Warning, "Job {JobId}: writing the attempt's outcome failed; retrying in {Delay} (the lease is still renewed).")]
    public static partial void CompletionFailed(ILogger logger, JobId jobId, TimeSpan delay, Exception exception);

    [LoggerMessage(13, LogLevel.Warning, "Job {JobId}: acknowledging its delivery failed; the queue delivers it again, and the store refuses the second run.")]
    public static partial void AcknowledgeFailed(ILogger logger, JobId jobId, Exception exception);

    [LoggerMessage(14, LogLevel.Error, "Job {JobId}: queueing it again after its lease expired failed, also after retries for about 30 s; the next sweep does not see it (it is Queued in the store).")]
    public static partial void RequeueFailed(ILogger logger, JobId jobId, Exception exception);

    [LoggerMessage(15, LogLevel.Warning, "Giving {Count} held jobs back to the queue at shutdown failed; they wait until their visibility lapses.")]
    public static partial void ReturnFailed(ILogger logger, int count, Exception exception);

    [LoggerMessage(16, LogLevel.Warning, "A workload's callback on CheckpointRequested failed at shutdown.")]
    public static partial void CheckpointRequestFailed(ILogger logger, Exception exception);

    [LoggerMessage(20, LogLevel.Warning, "Job {JobId}: its attempt was abandoned ({Reason}) while its code still runs, ignoring its cancellation token; the slot runs other jobs, but the job's concurrency limits stay taken until that code returns.")]
    public static partial void AbandonedStillRunning(ILogger logger, JobId jobId, string reason);

    [LoggerMessage(17, LogLevel.Warning, "Job {JobId}: queueing it again after its lease expired failed; retrying in {Delay}.")]
    public static partial void RequeueRetrying(ILogger logger, JobId jobId, TimeSpan delay, Exception exception);

    [LoggerMessage(18, LogLevel.Debug, "Job {JobId}: cancelled while it waited here; its delivery was dropped ({Reason}).")]
    public static partial void DroppedCancelled(ILogger logger, JobId jobId, string? reason);

    [LoggerMessage(19, LogLevel.Warning, "Job {JobId}: cancelled while it waited here, but dropping its delivery failed; the queue delivers it again, and the store refuses to run it.")]
    public static partial void DropCancelledFailed(ILogger logger, JobId jobId, Exception exception);

    [LoggerMessage(21, LogLevel.Warning, "The worker's cancellation listener fell behind and {Count} event(s) were dropped; it listens again and reads its running jobs' cancellation requests from the store.")]
    public static partial void CancellationsDropped(ILogger logger, long count);
}
