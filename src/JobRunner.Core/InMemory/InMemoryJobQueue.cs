using System.Diagnostics;

namespace JobRunner.InMemory;

/// <summary>
/// The embedded queue: per priority band (highest band first) one FIFO per tenant, taken in turns weighted by the
/// tenants' weights, so that what the scheduler's lookahead holds is already in proportion; one heap of delayed jobs driven by a single timer, and an in-flight table whose visibility lapses like an SQS message's, so a consumer that dies without
/// acknowledging loses nothing.
/// </summary>
[DebuggerDisplay("Ready = {_readyCount}, Delayed = {_delayed.Count}, InFlight = {_inFlight.Count}")]
internal sealed class InMemoryJobQueue : IJobQueue, IDisposable
{
    private readonly Lock _lock = new();
    private readonly Band[] _bands = new Band[JobRequest.MaxPriority + 1];
    private readonly PriorityQueue<QueuedJob, (DateTimeOffset Due, long Sequence)> _delayed = new();
    private readonly Dictionary<JobId, (QueuedJob Job, DateTimeOffset Until)> _inFlight = [];
    private readonly Queue<TaskCompletionSource> _waiters = new();
    private readonly TimeProvider _time;
    private readonly ITimer _timer;
    private DateTimeOffset _timerDue = DateTimeOffset.MaxValue;
    private int _readyCount;
    private long _sequence;

    public InMemoryJobQueue(TimeProvider time, Scheduling.TenantWeights? weights = null)
    {
        _time = time;
        weights ??= Scheduling.TenantWeights.Equal;
        for (var i = 0; i < _bands.Length; i++)
        {
            _bands[i] = new Band(weights);
        }

        _timer = time.CreateTimer(static state => ((InMemoryJobQueue)state!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Gets how many jobs are ready, delayed or in flight.</summary>
    public int Depth
    {
        get
        {
            lock (_lock)
            {
                return _readyCount + _delayed.Count + _inFlight.Count;
            }
        }
    }

    public ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        TaskCompletionSource? wake;
        lock (_lock)
        {
            var now = _time.GetUtcNow();
            if (job.DueAt is { } due && due > now)
            {
                _delayed.Enqueue(job, (due, ++_sequence));
                ArmTimer(due, now);
                return ValueTask.CompletedTask;
            }

            AddReady(job);
            wake = TakeWaiter();
        }

        Wake(wake);
        return ValueTask.CompletedTask;
    }

    public async ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken)
    {
        if (buffer.IsEmpty)
        {
            throw new ArgumentException("The buffer must hold at least one job.", nameof(buffer));
        }

        while (true)
        {
            TaskCompletionSource waiter;
            lock (_lock)
            {
                var taken = TakeReady(buffer.Span, visibility);
                if (taken > 0)
                {
                    return taken;
                }

                waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _waiters.Enqueue(waiter);
            }

            // Cancellation completes the waiter itself, so a wake-up handed to it is never lost: either the wake-up
            // won (and this consumer takes the job) or the cancellation did (and TakeWaiter skips it).
            using (cancellationToken.UnsafeRegister(static w => ((TaskCompletionSource)w!).TrySetCanceled(), waiter))
            {
                await waiter.Task.ConfigureAwait(false);
            }
        }
    }

    public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        lock (_lock)
        {
            foreach (var job in jobs)
            {
                RemoveInFlight(job);
            }
        }

        return ValueTask.CompletedTask;
    }

    public ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        var wake = 0;
        lock (_lock)
        {
            foreach (var job in jobs)
            {
                if (RemoveInFlight(job))
                {
                    AddReady(job);
                    wake++;
                }
            }
        }

        WakeWaiters(wake);
        return ValueTask.CompletedTask;
    }

    public ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        var until = _time.GetUtcNow() + visibility;
        lock (_lock)
        {
            foreach (var job in jobs)
            {
                if (_inFlight.TryGetValue(job.Id, out var entry) && ReferenceEquals(entry.Job, job))
                {
                    _inFlight[job.Id] = (entry.Job, until);
                }
            }
        }

        return ValueTask.CompletedTask;
    }

    public void Dispose() => _timer.Dispose();

    /// <summary>
    /// Removes the delayed deliveries of a job (one cancelled while it waited for its due time), so that a job
    /// scheduled far ahead and cancelled does not keep its entry until then. Not part of <see cref="IJobQueue"/>: the
    /// in-memory queue is internal, and the worker calls it when it hears of the cancellation. Costs a scan of the
    /// delayed jobs, paid per cancellation only.
    /// </summary>
    /// <param name="id">The job.</param>
    /// <returns>The deliveries removed, to enqueue again if the job turns out to be live (it was retried meanwhile); <see langword="null"/> when there were none.</returns>
    internal List<QueuedJob>? RemoveDelayed(JobId id)
    {
        lock (_lock)
        {
            List<QueuedJob>? removed = null;
            foreach (var (job, _) in _delayed.UnorderedItems)
            {
                if (job.Id == id)
                {
                    (removed ??= []).Add(job);
                }
            }

            foreach (var job in removed ?? [])
            {
                // The element found above, by reference: another delivery of the same job is a distinct entry.
                _delayed.Remove(job, out _, out _, ReferenceEqualityComparer.Instance);
            }

            // The timer may stay armed for a removed entry's due time: it then finds nothing due and arms for the next.
            return removed;
        }
    }

    /// <summary>Gets how many tenants the ready bands keep, idle ones included; for tests.</summary>
    internal int TenantCount
    {
        get
        {
            lock (_lock)
            {
                var count = 0;
                foreach (var band in _bands)
                {
                    count += band.TenantCount;
                }

                return count;
            }
        }
    }

    /// <summary>Removes this delivery only: a newer delivery of the same job (a retry) keeps its entry.</summary>
    private bool RemoveInFlight(QueuedJob job)
        => _inFlight.TryGetValue(job.Id, out var entry) && ReferenceEquals(entry.Job, job) && _inFlight.Remove(job.Id);

    private void AddReady(QueuedJob job)
    {
        _bands[Math.Clamp(job.Priority, JobRequest.MinPriority, JobRequest.MaxPriority)].Add(job);
        _readyCount++;
    }

    private int TakeReady(Span<QueuedJob> buffer, TimeSpan visibility)
    {
        if (_readyCount == 0)
        {
            return 0;
        }

        var until = _time.GetUtcNow() + visibility;
        var taken = 0;
        for (var band = JobRequest.MaxPriority; band >= JobRequest.MinPriority && taken < buffer.Length; band--)
        {
            var queue = _bands[band];
            while (taken < buffer.Length && queue.TryTake(out var job))
            {
                buffer[taken++] = job;
                _inFlight[job.Id] = (job, until);
            }
        }

        _readyCount -= taken;
        ArmTimer(until, _time.GetUtcNow());
        return taken;
    }

    private TaskCompletionSource? TakeWaiter()
    {
        while (_waiters.TryDequeue(out var waiter))
        {
            if (!waiter.Task.IsCompleted)
            {
                return waiter;
            }
        }

        return null;
    }

    private void WakeWaiters(int count)
    {
        for (var i = 0; i < count; i++)
        {
            TaskCompletionSource? waiter;
            lock (_lock)
            {
                waiter = TakeWaiter();
            }

            if (waiter is null)
            {
                return;
            }

            Wake(waiter);
        }
    }

    /// <summary>
    /// Wakes <paramref name="waiter"/>, taken from the waiters under the lock; if its consumer's cancellation won in
    /// between, the wake-up goes to the next waiter instead of being lost.
    /// </summary>
    private void Wake(TaskCompletionSource? waiter)
    {
        while (waiter is not null && !waiter.TrySetResult())
        {
            lock (_lock)
            {
                waiter = TakeWaiter();
            }
        }
    }

    private void ArmTimer(DateTimeOffset due, DateTimeOffset now)
    {
        if (due < _timerDue)
        {
            // A timer holds at most about 49 days: a later due time is reached in steps (OnTimer re-arms).
            var wait = due > now ? due - now : TimeSpan.Zero;
            if (wait > TimerLimits.Max)
            {
                wait = TimerLimits.Max;
            }

            _timerDue = now + wait;
            _timer.Change(wait, Timeout.InfiniteTimeSpan);
        }
    }

    private void OnTimer()
    {
        var woken = 0;
        lock (_lock)
        {
            var now = _time.GetUtcNow();
            _timerDue = DateTimeOffset.MaxValue;
            while (_delayed.TryPeek(out var job, out var key) && key.Due <= now)
            {
                _delayed.Dequeue();
                AddReady(job);
                woken++;
            }

            List<QueuedJob>? lapsed = null;
            var nextLapse = DateTimeOffset.MaxValue;
            foreach (var (id, entry) in _inFlight)
            {
                if (entry.Until <= now)
                {
                    (lapsed ??= []).Add(entry.Job);
                }
                else if (entry.Until < nextLapse)
                {
                    nextLapse = entry.Until;
                }
            }

            foreach (var job in lapsed ?? [])
            {
                _inFlight.Remove(job.Id);
                AddReady(job);
                woken++;
            }

            if (_delayed.TryPeek(out _, out var next))
            {
                ArmTimer(next.Due, now);
            }

            if (nextLapse != DateTimeOffset.MaxValue)
            {
                ArmTimer(nextLapse, now);
            }
        }

        WakeWaiters(woken);
    }

    /// <summary>
    /// One priority band: a FIFO per tenant, taken in weighted turns (stride scheduling, as in the scheduler), so the
    /// jobs the scheduler gets to choose from already arrive in proportion to the tenants' weights.
    /// </summary>
    private sealed class Band(Scheduling.TenantWeights weights)
    {
        // Tenants kept before the first sweep of idle ones (and at least between two sweeps).
        private const int MinSweepAt = 64;

        // An emptied tenant's FIFO keeps at most this capacity; a larger one is trimmed, so idle tenants hold little.
        private const int MaxIdleCapacity = 64;

        private readonly Dictionary<string, TenantQueue> _byTenant = new(StringComparer.Ordinal);
        private readonly Scheduling.WeightedTurns<TenantQueue> _turns = new();
        private int _sweepAt = MinSweepAt;

        /// <summary>Gets how many tenants the band keeps, idle ones included.</summary>
        public int TenantCount => _byTenant.Count;

        public void Add(QueuedJob job)
        {
            if (!_byTenant.TryGetValue(job.Tenant, out var queue))
            {
                if (_byTenant.Count >= _sweepAt)
                {
                    DropIdleTenants();
                }

                queue = new TenantQueue(job.Tenant);
                _byTenant.Add(job.Tenant, queue);
            }

            queue.Jobs.Enqueue(job);

            // A kept idle tenant rejoins at its own pass when that is ahead of the band's (it had a turn just before it
            // emptied): a tenant that refills right after each take waits behind the others like a busy one.
            _turns.Join(queue);
        }

        public bool TryTake(out QueuedJob job)
        {
            if (!_turns.TryNext(out var queue))
            {
                job = null!;
                return false;
            }

            job = queue.Jobs.Dequeue();
            _turns.Served(queue, weights.WeightOf(queue.Tenant));
            if (queue.Jobs.Count > 0)
            {
                _turns.Push(queue);
            }
            else if (queue.Jobs.EnsureCapacity(0) > MaxIdleCapacity)
            {
                // Emptied: kept with its pass (see Add), until a sweep drops it; without the room of its last backlog.
                queue.Jobs.TrimExcess();
            }

            return true;
        }

        /// <summary>
        /// Drops the tenants that have no job here, so that tenants that come and go do not make the band grow for good.
        /// A dropped tenant that comes back starts again at the band's current pass: what it gains is at most the one
        /// turn it was ahead after its last one. Sweeps happen only when the band has twice the tenants it kept after
        /// the last one (at least <see cref="MinSweepAt"/>), so their cost is paid by the tenants added in between and a
        /// tenant gains that turn at most once per sweep.
        /// </summary>
        private void DropIdleTenants()
        {
            foreach (var (name, queue) in _byTenant)
            {
                if (queue.Jobs.Count == 0 && !queue.InTurn)
                {
                    _byTenant.Remove(name);
                }
            }

            _sweepAt = Math.Max(MinSweepAt, 2 * _byTenant.Count);
        }

        private sealed class TenantQueue(string tenant) : Scheduling.ITurnTaker
        {
            public string Tenant { get; } = tenant;

            public double Pass { get; set; }

            public bool InTurn { get; set; }

            public Queue<QueuedJob> Jobs { get; } = new();
        }
    }
}
