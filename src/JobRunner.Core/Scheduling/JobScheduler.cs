using System.Buffers;
using JobRunner.Events;
using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// The worker's scheduler, shared by its slots (take, release), its feeder (add) and the client (explain): a
/// <see cref="FairScheduler"/> under one lock, and the slots that wait for a takeable job (each with its own reusable
/// signal, woken one per job that arrives or limit that frees up).
/// While someone watches <see cref="JobEventKind.Waiting"/> events, it explains the watched held jobs after each change
/// and publishes those whose reason (or limit) changed; with no such watcher that costs one volatile read per change.
/// </summary>
internal sealed class JobScheduler : ISchedulerControl, IDisposable
{
    private readonly Lock _lock = new();
    private readonly FairScheduler _scheduler;
    private readonly TenantWeights _weights;
    private readonly SchedulerOptions _options;
    private readonly Stack<ReusableSignal> _waiters = new();
    private readonly TimeProvider _time;
    private readonly ITimer _timer;
    private readonly IJobEventBus _events;
    private readonly JobEventBus? _bus;
    private readonly int _slots;
    private readonly Dictionary<JobId, (WaitReason Reason, string? Limit, long Generation)> _published = [];
    private readonly List<QueuedJob> _explained = [];
    private readonly List<JobId> _stale = [];
    private DateTimeOffset _timerDue = DateTimeOffset.MaxValue;
    private long _generation;
    private bool _closed;

    public JobScheduler(IOptions<SchedulerOptions> options, TenantWeights weights, TimeProvider time, IOptions<WorkerOptions> worker, IJobEventBus events)
    {
        _options = options.Value;
        _time = time;
        _events = events;
        _bus = events as JobEventBus;
        var workerOptions = worker.Value;
        _slots = workerOptions.Slots;
        _weights = weights;
        _scheduler = new FairScheduler(options, weights, time, new Dictionary<string, string>(workerOptions.Labels, StringComparer.Ordinal), workerOptions.HeartbeatInterval);

        // One timer wakes the slots when a rate limit refills or a waiting job is due for promotion.
        _timer = time.CreateTimer(static s => ((JobScheduler)s!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Raised after a job was added, taken or released (outside the lock); tests wait on it instead of sleeping.</summary>
    public event Action? Changed;

    /// <summary>Gets the number of free slots (a taken job holds one until it is released), for explanations.</summary>
    private int FreeSlots => _slots - _scheduler.RunningCount;

    public int PendingCount
    {
        get
        {
            lock (_lock)
            {
                return _scheduler.PendingCount;
            }
        }
    }

    /// <summary>Gets whether the scheduler holds jobs, read without its lock: a hint, for a slot that found nothing to take.</summary>
    public bool HoldsJobs => _scheduler.PendingCount > 0;

    /// <summary>Gets how many held jobs this worker may not run (they wait to be given back to the queue).</summary>
    public int ParkedCount
    {
        get
        {
            lock (_lock)
            {
                return _scheduler.ParkedCount;
            }
        }
    }

    /// <summary>
    /// Holds the jobs the queue delivered, under one lock for the batch, and writes each one's admission: a
    /// <see cref="Admission.Declined"/> one must be given back to the queue now. For a <see cref="Admission.Duplicate"/>
    /// the scheduler keeps the newer delivery and writes the older one in its place, to acknowledge (or
    /// <see langword="null"/>: the same delivery came twice). Wakes as many waiting slots as jobs were held.
    /// </summary>
    public void Add(Span<QueuedJob> jobs, Span<Admission> admissions)
    {
        var held = 0;
        var changed = false;
        ReusableSignal[]? woken = null;
        var count = 0;
        lock (_lock)
        {
            for (var i = 0; i < jobs.Length; i++)
            {
                var admission = _scheduler.Add(jobs[i], out var dropped);
                if (admission == Admission.Duplicate)
                {
                    jobs[i] = dropped!;
                }

                admissions[i] = admission;
                held += admission == Admission.Held ? 1 : 0;
                changed |= admission is Admission.Held or Admission.Parked;
            }

            count = Math.Min(held, _waiters.Count);
            if (count > 0)
            {
                woken = ArrayPool<ReusableSignal>.Shared.Rent(count);
                for (var i = 0; i < count; i++)
                {
                    woken[i] = _waiters.Pop();
                }
            }
        }

        if (woken is not null)
        {
            for (var i = 0; i < count; i++)
            {
                woken[i].Set();
            }

            ArrayPool<ReusableSignal>.Shared.Return(woken, clearArray: true);
        }

        if (changed)
        {
            OnChanged();
        }
    }

    /// <summary>Holds one job delivered by the queue (see the batch overload).</summary>
    public Admission Add(QueuedJob job)
    {
        Span<Admission> admission = stackalloc Admission[1];
        Add(new Span<QueuedJob>(ref job), admission);
        return admission[0];
    }

    /// <summary>Removes the parked jobs (this worker may not run them), to give them back to the queue.</summary>
    public List<QueuedJob> TakeParked()
    {
        var parked = new List<QueuedJob>();
        lock (_lock)
        {
            _scheduler.TakeParked(parked);
        }

        if (parked.Count > 0)
        {
            OnChanged();
        }

        return parked;
    }

    /// <summary>
    /// A slot's one call per job: gives back the limits of the job it just ran (if any) and takes the next one, in
    /// one lock round. When none can be taken, the slot's <paramref name="signal"/> is registered and
    /// <paramref name="wait"/> completes when a job may have become takeable (or the scheduler closed): the slot
    /// then calls again. A slot that takes a job while more wait and other slots sleep wakes one of them, so a batch
    /// of takeable jobs spreads over the free slots one wake-up at a time.
    /// </summary>
    public bool TakeOrWait(QueuedJob? released, ReusableSignal signal, out QueuedJob job, out ValueTask wait)
    {
        bool taken;
        ReusableSignal? next = null;
        wait = default;
        job = null!;
        lock (_lock)
        {
            if (released is not null)
            {
                _scheduler.Release(released);
            }

            taken = !_closed && _scheduler.TryTake(out job);
            if (taken)
            {
                if (_scheduler.PendingCount > 0 && _waiters.Count > 0)
                {
                    next = _waiters.Pop();
                }
            }
            else
            {
                if (!_closed)
                {
                    ArmTimer();
                    wait = signal.Wait();
                    _waiters.Push(signal);
                }
            }
        }

        next?.Set();
        if (taken || released is not null)
        {
            OnChanged();
        }

        return taken;
    }

    /// <summary>
    /// Gives back the rate-limit tokens of a taken job that did not start (its lease was refused), so that jobs
    /// cancelled while they waited here do not use up the rate of the jobs behind them.
    /// </summary>
    public void Refund(QueuedJob job)
    {
        lock (_lock)
        {
            _scheduler.Refund(job);
        }
    }

    /// <summary>Gives back the limits of a job a slot ran, when the slot takes no other (it is stopping).</summary>
    public void Release(QueuedJob job)
    {
        ReusableSignal? next;
        lock (_lock)
        {
            _scheduler.Release(job);
            _waiters.TryPop(out next);
        }

        // A limit it held may keep a job waiting that another slot can now run.
        next?.Set();
        OnChanged();
    }

    /// <summary>
    /// Removes a held job (waiting or parked) that must not run, such as one cancelled while it waited here: it leaves
    /// without being chosen, so its tenant's turn is not spent and it no longer counts in the gauges or explanations. One
    /// lock round per call, made only for such jobs: the take path does not look for them.
    /// </summary>
    /// <param name="id">The job.</param>
    /// <param name="job">The delivery that was held, to acknowledge (or give back to the queue).</param>
    /// <param name="pending">Whether it waited in a band (it held room in the lookahead) rather than parked.</param>
    /// <returns>Whether the job was held here.</returns>
    public bool TryRemove(JobId id, out QueuedJob job, out bool pending)
    {
        bool removed;
        lock (_lock)
        {
            removed = _scheduler.TryRemove(id, out job, out pending);
        }

        if (removed)
        {
            OnChanged();
        }

        return removed;
    }

    /// <summary>Removes and returns every held job, parked ones too (at shutdown, to give them back to the queue).</summary>
    public List<QueuedJob> RemoveAll()
    {
        lock (_lock)
        {
            var all = new List<QueuedJob>();
            _scheduler.CopyHeld(all);
            foreach (var job in all)
            {
                _scheduler.Remove(job.Id);
            }

            return all;
        }
    }

    /// <summary>Every held job, parked ones too (their queue visibility is extended with the heartbeat).</summary>
    public List<QueuedJob> Snapshot()
    {
        var all = new List<QueuedJob>();
        lock (_lock)
        {
            _scheduler.CopyHeld(all);
        }

        return all;
    }

    /// <summary>The held jobs this worker may run (waiting in a band; parked ones left out), for the scheduler's gauges.</summary>
    public List<QueuedJob> SnapshotPending()
    {
        var pending = new List<QueuedJob>();
        lock (_lock)
        {
            _scheduler.CopyPending(pending);
        }

        return pending;
    }

    public JobExplanation? Explain(JobId id)
    {
        lock (_lock)
        {
            return _scheduler.Explain(id, FreeSlots);
        }
    }

    /// <summary>Stops handing out jobs: every waiting slot wakes, and none waits again (at shutdown).</summary>
    public void Close()
    {
        ReusableSignal[] woken;
        lock (_lock)
        {
            _closed = true;
            woken = [.. _waiters];
            _waiters.Clear();
        }

        foreach (var signal in woken)
        {
            signal.Set();
        }
    }

    /// <summary>Wakes one waiting slot: something outside a take or release may have made a job takeable.</summary>
    private void WakeOne()
    {
        ReusableSignal? next;
        lock (_lock)
        {
            _waiters.TryPop(out next);
        }

        next?.Set();
    }

    /// <summary>Arms the timer for the next time a held job becomes takeable (a rate limit refills, a wait ends).</summary>
    private void ArmTimer()
    {
        if (_scheduler.NextWake is { } at && at < _timerDue)
        {
            _timerDue = at;
            // Capped at what a timer takes (~49.7 days): one due later wakes a slot early, which arms it again.
            var delay = at - _time.GetUtcNow();
            _timer.Change(delay <= TimeSpan.Zero ? TimeSpan.FromMilliseconds(1) : delay > TimerLimits.Max ? TimerLimits.Max : delay, Timeout.InfiniteTimeSpan);
        }
    }

    public int GetTenantWeight(string tenant)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        return _weights.WeightOf(tenant);
    }

    public void SetTenantWeight(string tenant, int weight)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        lock (_lock)
        {
            _scheduler.SetTenantWeight(tenant, weight);
        }

        WakeOne();
    }

    public void SetTenantTier(string tenant, string tier)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        ArgumentNullException.ThrowIfNull(tier);
        if (!_options.TierWeights.TryGetValue(tier, out var weight))
        {
            throw new JobValidationException([$"Tier '{tier}' is unknown. Use one of: {string.Join(", ", _options.TierWeights.Keys)}, or add it to SchedulerOptions.TierWeights."]);
        }

        SetTenantWeight(tenant, weight);
    }

    public void Dispose() => _timer.Dispose();

    private void OnTimer()
    {
        lock (_lock)
        {
            _timerDue = DateTimeOffset.MaxValue;
        }

        WakeOne();
        OnChanged();
    }

    private void OnChanged()
    {
        var interest = _bus is not null ? _bus.Waiting : _events.IsWatched(JobEventKind.Waiting) ? JobEventBus.WaitingInterest.Everyone : null;
        if (interest is not null)
        {
            PublishWaiting(interest);
        }

        Changed?.Invoke();
    }

    /// <summary>
    /// Explains the watched held jobs and publishes a <see cref="JobEventKind.Waiting"/> event for each whose reason or
    /// limit changed since the last one. <see cref="WaitReason.Queued"/> (about to be scheduled) is remembered but not
    /// published: it is the normal moment between arriving and being taken, not a hold.
    /// </summary>
    private void PublishWaiting(JobEventBus.WaitingInterest interest)
    {
        List<JobEvent>? events = null;
        lock (_lock)
        {
            var generation = ++_generation;
            var now = _time.GetUtcNow();
            _explained.Clear();
            if (interest.All)
            {
                _scheduler.CopyHeld(_explained);
            }
            else
            {
                foreach (var id in interest.Jobs)
                {
                    if (_scheduler.TryGetHeld(id, out var held))
                    {
                        _explained.Add(held);
                    }
                }
            }

            foreach (var job in _explained)
            {
                if (_scheduler.Explain(job.Id, FreeSlots) is not { } explanation)
                {
                    continue;
                }

                var changed = !_published.TryGetValue(job.Id, out var last) || last.Reason != explanation.Reason || !string.Equals(last.Limit, explanation.Limit, StringComparison.Ordinal);
                _published[job.Id] = (explanation.Reason, explanation.Limit, generation);
                if (changed && explanation.Reason != WaitReason.Queued)
                {
                    (events ??= []).Add(new JobEvent
                    {
                        Kind = JobEventKind.Waiting,
                        JobId = job.Id,
                        Tenant = job.Tenant,
                        Workload = job.Workload,
                        Timestamp = now,
                        State = JobState.Queued,
                        Explanation = explanation,
                        Message = explanation.Message,
                    });
                }
            }

            _explained.Clear();

            // Forget the jobs that left (taken, given back) or are no longer watched.
            if (_published.Count > 0)
            {
                foreach (var (id, entry) in _published)
                {
                    if (entry.Generation != generation)
                    {
                        _stale.Add(id);
                    }
                }

                foreach (var id in _stale)
                {
                    _published.Remove(id);
                }

                _stale.Clear();
            }
        }

        foreach (var jobEvent in events ?? [])
        {
            _events.Publish(jobEvent);
        }
    }
}
