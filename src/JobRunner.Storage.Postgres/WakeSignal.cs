namespace JobRunner.Storage.Postgres;

/// <summary>
/// A level a waiter captures before it looks for work (<see cref="Current"/>), so that a wake-up that arrives while it
/// looks is not lost: a wake-up completes the captured task and installs a fresh one.
/// A wake-up is either plain (<see cref="Set"/>: something may be ready, look) or an offer (<see cref="Offer"/>: these
/// jobs, ready now, were just queued). A waiter whose last look found every ready row, and that has seen only offers
/// since (<see cref="PlainCount"/> unchanged), knows every ready job it has not seen is among the offers, and may take
/// them without looking again.
/// </summary>
internal sealed class WakeSignal
{
    /// <summary>How many offered jobs are kept for the waiter; beyond that a further offer is a plain wake-up.</summary>
    public const int MaxOffers = 64;

    private readonly Lock _lock = new();
    private TaskCompletionSource _current = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private List<QueuedJob>? _offers;
    private long _plain;

    public Task Current => Volatile.Read(ref _current).Task;

    /// <summary>Gets how many plain wake-ups there were so far.</summary>
    public long PlainCount => Interlocked.Read(ref _plain);

    /// <summary>Wakes the waiter to look for ready jobs.</summary>
    public void Set()
    {
        Interlocked.Increment(ref _plain);
        Wake();
    }

    /// <summary>Wakes the waiter with jobs that were just queued; a job that is not offerable is a plain wake-up instead.</summary>
    /// <param name="jobs">The jobs.</param>
    public void Offer(IReadOnlyList<QueuedJob> jobs)
    {
        lock (_lock)
        {
            foreach (var job in jobs)
            {
                if (!IsOfferable(job) || _offers?.Count >= MaxOffers)
                {
                    Interlocked.Increment(ref _plain);
                }
                else
                {
                    (_offers ??= []).Add(job);
                }
            }
        }

        Wake();
    }

    /// <summary>
    /// Whether <paramref name="job"/> can be offered: ready now, and without an affinity (a job only some workers may run
    /// would be taken by every idle worker, and given back by those that may not run it).
    /// </summary>
    public static bool IsOfferable(QueuedJob job) => job.DueAt is null && job.Affinity is null;

    /// <summary>Takes the jobs offered so far.</summary>
    /// <returns>The jobs, or <see langword="null"/> when there are none.</returns>
    public List<QueuedJob>? TakeOffers()
    {
        lock (_lock)
        {
            var offers = _offers;
            _offers = null;
            return offers;
        }
    }

    private void Wake()
    {
        var fresh = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Interlocked.Exchange(ref _current, fresh).TrySetResult();
    }
}
