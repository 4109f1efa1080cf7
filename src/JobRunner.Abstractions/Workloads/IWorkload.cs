namespace JobRunner;

/// <summary>
/// A named kind of work, run in-process. Register it with <c>AddWorkload&lt;T&gt;("name")</c>; each attempt gets a new
/// instance from its own DI scope.
/// </summary>
/// <remarks>
/// Return normally to succeed. Throw to fail the attempt: the exception is classified (transient or permanent) as thrown,
/// never wrapped. Observe the cancellation token (cancellation, timeout, shutdown) and
/// <see cref="WorkloadContext.CheckpointRequested"/> (save a checkpoint now: the worker is about to stop).
/// </remarks>
public interface IWorkload
{
    /// <summary>Runs one attempt.</summary>
    /// <param name="context">The attempt's context: input, last checkpoint, progress, logs.</param>
    /// <param name="cancellationToken">
    /// Signalled when the job is cancelled, times out, or the worker stops. Valid only until the returned task completes:
    /// the worker reuses its source for a later attempt once this one finished without being stopped, so work the
    /// workload leaves running must not keep it.
    /// </param>
    /// <returns>A task that completes when the attempt is done.</returns>
    ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken);
}
