// Compiled into each package that starts something once for all its callers (the PostgreSQL migrations, the SQS
// queues' resolution): one source, no public type.
namespace JobRunner;

/// <summary>
/// A start that every caller shares until it succeeds. A failed or cancelled start is not kept: the next caller (the
/// host's next start, a worker's next call) runs it again.
/// </summary>
internal sealed class SharedStart(Func<Task> start)
{
    private readonly Lock _lock = new();
    private Task? _task;

    /// <summary>Waits for the start, running it first if no run is under way or succeeded.</summary>
    /// <param name="cancellationToken">Stops this caller's wait, not the shared start.</param>
    /// <returns>A task that completes when the start has succeeded.</returns>
    public Task WaitAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _task) is { IsCompletedSuccessfully: true })
        {
            return Task.CompletedTask;
        }

        lock (_lock)
        {
            if (_task is null || _task.IsFaulted || _task.IsCanceled)
            {
                Volatile.Write(ref _task, start());
            }

            return _task.WaitAsync(cancellationToken);
        }
    }
}
