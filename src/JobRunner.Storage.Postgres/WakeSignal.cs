namespace JobRunner.Storage.Postgres;

/// <summary>
/// A level a waiter captures before it looks for work (<see cref="Current"/>), so that a wake-up that arrives while it
/// looks is not lost: <see cref="Set"/> completes the captured task and installs a fresh one.
/// </summary>
internal sealed class WakeSignal
{
    private TaskCompletionSource _current = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task Current => Volatile.Read(ref _current).Task;

    public void Set()
    {
        var fresh = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Interlocked.Exchange(ref _current, fresh).TrySetResult();
    }
}
