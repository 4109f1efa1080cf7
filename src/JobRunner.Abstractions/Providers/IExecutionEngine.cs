namespace JobRunner;

/// <summary>
/// Runs one attempt of a workload: in-process, as a local process, or as a container on a cluster. Every engine turns
/// its result into the same outcome: return normally to succeed, throw to fail (the exception is classified as thrown).
/// </summary>
public interface IExecutionEngine
{
    /// <summary>Runs one attempt.</summary>
    /// <param name="context">The attempt's context.</param>
    /// <param name="cancellationToken">
    /// Signalled when the job is cancelled, times out, or the worker stops. Valid only until the returned task completes:
    /// the worker reuses its source for a later attempt once this one finished without being stopped, so work the engine
    /// leaves running must not keep it.
    /// </param>
    /// <returns>A task that completes when the attempt is done.</returns>
    ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken);
}
