using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// The worker's scheduler, shared by its slots (take, release), its feeder (add) and the client (explain): a
/// <see cref="FairScheduler"/> under one lock, with a signal that wakes slots when a job arrives or a limit frees up.
/// </summary>
internal sealed class JobScheduler : ISchedulerControl, IDisposable
{
    private readonly Lock _lock = new();
    private readonly FairScheduler _scheduler;
    private readonly SchedulerOptions _options;
    private readonly SemaphoreSlim _wake = new(0, int.MaxValue);
    private readonly TimeProvider _time;
    private readonly ITimer _timer;
    private DateTimeOffset _timerDue = DateTimeOffset.MaxValue;

    public JobScheduler(IOptions<SchedulerOptions> options, TenantWeights weights, TimeProvider time)
    {
        _options = options.Value;
        _time = time;
        _scheduler = new FairScheduler(options, weights, time);

        // One timer wakes the slots when a rate limit refills or a waiting job is due for promotion.
        _timer = time.CreateTimer(static s => ((JobScheduler)s!).OnTimer(), this, Timeout.InfiniteTimeSpan, Timeout.InfiniteTimeSpan);
    }

    /// <summary>Raised after a job was added, taken or released (outside the lock); tests wait on it instead of sleeping.</summary>
    public event Action? Changed;

    /// <summary>Gets or sets the number of free slots, for explanations.</summary>
    public int FreeSlots { get; set; } = 1;

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

    public bool Add(QueuedJob job)
    {
        bool added;
        lock (_lock)
        {
            added = _scheduler.Add(job);
        }

        if (added)
        {
            Wake();
            Changed?.Invoke();
        }

        return added;
    }

    public bool TryTake(out QueuedJob job)
    {
        bool taken;
        lock (_lock)
        {
            taken = _scheduler.TryTake(out job);
            if (!taken && _scheduler.NextRefill is { } at && at < _timerDue)
            {
                _timerDue = at;
                var wait = at - _time.GetUtcNow();
                _timer.Change(wait > TimeSpan.Zero ? wait : TimeSpan.FromMilliseconds(1), Timeout.InfiniteTimeSpan);
            }
        }

        if (taken)
        {
            Changed?.Invoke();
        }

        return taken;
    }

    public void Release(QueuedJob job)
    {
        lock (_lock)
        {
            _scheduler.Release(job);
        }

        Wake();
        Changed?.Invoke();
    }

    /// <summary>Removes and returns every held job (at shutdown, to give them back to the queue).</summary>
    public List<QueuedJob> RemoveAll()
    {
        lock (_lock)
        {
            var all = _scheduler.Pending.ToList();
            foreach (var job in all)
            {
                _scheduler.Remove(job.Id);
            }

            return all;
        }
    }

    public List<QueuedJob> Snapshot()
    {
        lock (_lock)
        {
            return [.. _scheduler.Pending];
        }
    }

    public JobExplanation? Explain(JobId id)
    {
        lock (_lock)
        {
            return _scheduler.Explain(id, FreeSlots);
        }
    }

    /// <summary>Waits until a job may have become takeable.</summary>
    public Task WaitAsync(CancellationToken cancellationToken) => _wake.WaitAsync(cancellationToken);

    /// <summary>Wakes one waiting slot (a few spurious wake-ups are cheaper than a lost one).</summary>
    public void Wake()
    {
        if (_wake.CurrentCount < 64)
        {
            _wake.Release();
        }
    }

    public void WakeAll(int count) => _wake.Release(count);

    public void SetTenantWeight(string tenant, int weight)
    {
        ArgumentNullException.ThrowIfNull(tenant);
        lock (_lock)
        {
            _scheduler.SetTenantWeight(tenant, weight);
        }

        Wake();
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

    public void Dispose()
    {
        _timer.Dispose();
        _wake.Dispose();
    }

    private void OnTimer()
    {
        lock (_lock)
        {
            _timerDue = DateTimeOffset.MaxValue;
        }

        Wake();
        Changed?.Invoke();
    }
}
