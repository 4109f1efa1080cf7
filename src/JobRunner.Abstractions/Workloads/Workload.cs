namespace JobRunner;

/// <summary>A workload with a typed input. The input is required: a submit without one is rejected.</summary>
/// <typeparam name="TInput">The input type, read from the job's JSON input.</typeparam>
public abstract class Workload<TInput> : IWorkload
{
    /// <inheritdoc />
    ValueTask IWorkload.ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        return ExecuteAsync(context.GetInput<TInput>(), context, cancellationToken);
    }

    /// <summary>Runs one attempt.</summary>
    /// <param name="input">The job's input.</param>
    /// <param name="context">The attempt's context.</param>
    /// <param name="cancellationToken">Signalled when the job is cancelled, times out, or the worker stops.</param>
    /// <returns>A task that completes when the attempt is done.</returns>
    protected abstract ValueTask ExecuteAsync(TInput input, WorkloadContext context, CancellationToken cancellationToken);
}

/// <summary>A workload with a typed input and a typed checkpoint that survives failures, crashes and restarts.</summary>
/// <typeparam name="TInput">The input type, read from the job's JSON input.</typeparam>
/// <typeparam name="TCheckpoint">The checkpoint type, stored as JSON.</typeparam>
public abstract class Workload<TInput, TCheckpoint> : IWorkload
{
    /// <inheritdoc />
    ValueTask IWorkload.ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        var input = context.GetInput<TInput>();
        context.TryGetCheckpoint<TCheckpoint>(out var checkpoint);
        return ExecuteAsync(input, checkpoint, context, cancellationToken);
    }

    /// <summary>Runs one attempt.</summary>
    /// <param name="input">The job's input.</param>
    /// <param name="checkpoint">The last checkpoint, or <see langword="default"/> on a fresh start.</param>
    /// <param name="context">The attempt's context; save checkpoints with <see cref="WorkloadContext.SaveCheckpointAsync{T}"/>.</param>
    /// <param name="cancellationToken">Signalled when the job is cancelled, times out, or the worker stops.</param>
    /// <returns>A task that completes when the attempt is done.</returns>
    protected abstract ValueTask ExecuteAsync(TInput input, TCheckpoint? checkpoint, WorkloadContext context, CancellationToken cancellationToken);
}
