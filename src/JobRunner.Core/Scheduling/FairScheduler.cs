using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// Chooses which held job runs next. Strict priority bands (10 first); inside a band, weighted fair share across
/// tenants by stride scheduling (each tenant has a pass; the lowest pass with an admissible job goes, then its pass
/// grows by 1/weight; a tenant that becomes active starts at the band's current pass, so idle time earns no credit and
/// the share of an idle tenant goes to the others; see <see cref="WeightedTurns{T}"/>). Concurrency limits per workload, tenant and concurrency key are
/// checked at admission and given back by <see cref="Release"/>. Not thread-safe: the worker calls it under a lock.
/// </summary>
[DebuggerDisplay("Pending = {_pending.Count}, Running = {RunningCount}")]
internal sealed class FairScheduler
{
    private readonly Band[] _bands = new Band[JobRequest.MaxPriority + 1];
    private readonly Dictionary<JobId, LinkedListNode<Entry>> _pending = [];
    private readonly Dictionary<string, int> _runningByWorkload = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _runningByTenant = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _runningByKey = new(StringComparer.Ordinal);
    private readonly SchedulerOptions _options;
    private readonly TenantWeights _weights;
    private readonly TimeProvider _time;
    private readonly Dictionary<string, Bucket> _workloadBuckets = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Bucket> _tenantBuckets = new(StringComparer.Ordinal);
    private readonly Queue<(JobId Id, DateTimeOffset Due)> _aging = new();
    private readonly List<Tenant> _skipped = [];
    private long _sequence;

    public FairScheduler(IOptions<SchedulerOptions> options, TenantWeights? weights = null, TimeProvider? time = null)
    {
        _options = options.Value;
        _weights = weights ?? new TenantWeights(options);
        _time = time ?? TimeProvider.System;
        foreach (var (name, rate) in _options.WorkloadRates)
        {
            _workloadBuckets[name] = new Bucket(rate, _time.GetUtcNow());
        }

        foreach (var (name, rate) in _options.TenantRates)
        {
            _tenantBuckets[name] = new Bucket(rate, _time.GetUtcNow());
        }
        for (var i = 0; i < _bands.Length; i++)
        {
            _bands[i] = new Band();
        }
    }

    public int PendingCount => _pending.Count;

    public int RunningCount { get; private set; }

    /// <summary>Gets when a rate-limited job may next become admissible, after a take that found nothing; else <see langword="null"/>.</summary>
    public DateTimeOffset? NextRefill { get; private set; }

    public IEnumerable<QueuedJob> Pending => _pending.Values.Select(static n => n.Value.Job);

    /// <summary>Sets a tenant's weight now, overriding its tier.</summary>
    public void SetTenantWeight(string tenant, int weight)
    {
        _weights.Set(tenant, weight);
        foreach (var band in _bands)
        {
            if (band.Tenants.TryGetValue(tenant, out var t))
            {
                t.Weight = weight;
            }
        }
    }

    /// <summary>Holds a ready job until it is chosen. A job already held is ignored.</summary>
    /// <returns><see langword="false"/> when the job was already held.</returns>
    public bool Add(QueuedJob job)
    {
        if (_pending.ContainsKey(job.Id))
        {
            return false;
        }

        var priority = Math.Clamp(job.Priority, JobRequest.MinPriority, JobRequest.MaxPriority);
        if (_options.MaxWait is { } maxWait && priority < JobRequest.MaxPriority)
        {
            _aging.Enqueue((job.Id, _time.GetUtcNow() + maxWait));
        }

        Insert(job, priority, ++_sequence);
        return true;
    }

    private void Insert(QueuedJob job, int priority, long sequence)
    {
        var band = _bands[priority];
        if (!band.Tenants.TryGetValue(job.Tenant, out var tenant))
        {
            tenant = new Tenant(job.Tenant, _weights.WeightOf(job.Tenant));
            band.Tenants.Add(job.Tenant, tenant);
        }

        band.Turns.Join(tenant);

        _pending[job.Id] = tenant.Add(new Entry(job, sequence, priority));
    }

    /// <summary>Removes a held job that will not run here (returned to the queue).</summary>
    public bool Remove(JobId id)
    {
        if (!_pending.Remove(id, out var node))
        {
            return false;
        }

        _bands[node.Value.Priority].Tenants[node.Value.Job.Tenant].Remove(node);

        // An emptied tenant stays in the band's heap until a take pops and drops it.
        return true;
    }

    /// <summary>Chooses the next job to run, and counts it as running.</summary>
    public bool TryTake(out QueuedJob job)
    {
        Promote();
        NextRefill = null;
        for (var priority = JobRequest.MaxPriority; priority >= JobRequest.MinPriority; priority--)
        {
            var band = _bands[priority];
            if (band.Turns.Count > 0 && TryTakeFromBand(band, out job))
            {
                _pending.Remove(job.Id);
                Count(job, +1);
                Consume(job);
                return true;
            }
        }

        job = null!;
        return false;
    }

    /// <summary>Gives back the limits a running job held (after any outcome).</summary>
    public void Release(QueuedJob job) => Count(job, -1);

    /// <summary>Explains why a held job waits; <see langword="null"/> when it is not held.</summary>
    public JobExplanation? Explain(JobId id, int freeSlots)
    {
        if (!_pending.TryGetValue(id, out var node))
        {
            return null;
        }

        var job = node.Value.Job;
        var effective = node.Value.Priority;
        var block = BlockedBy(job);
        if (block != Block.None)
        {
            var limit = Describe(block, job);
            return block is Block.WorkloadRate or Block.TenantRate
                ? new JobExplanation(id, WaitReason.RateLimited, $"The rate limit {limit} is used up; it runs when the bucket refills.", limit)
                : new JobExplanation(id, WaitReason.ConcurrencyLimit, $"The concurrency limit {limit} is reached; it runs when one of those attempts ends.", limit);
        }

        for (var priority = JobRequest.MaxPriority; priority > effective; priority--)
        {
            foreach (var tenant in _bands[priority].Tenants.Values)
            {
                if (tenant.HasAdmissible(this))
                {
                    return new JobExplanation(id, WaitReason.HigherPriority, $"Jobs of priority {priority} are ahead of it (it has priority {effective}{(effective != job.Priority ? $", promoted from {job.Priority} after waiting" : "")}).");
                }
            }
        }

        var band = _bands[effective];
        var own = band.Tenants[job.Tenant];
        foreach (var other in band.Tenants.Values)
        {
            if (other != own && other.Pass < own.Pass && other.HasAdmissible(this))
            {
                return new JobExplanation(id, WaitReason.OverTenantShare, $"Tenant '{job.Tenant}' (weight {own.Weight}) used its share of priority {effective}; tenant '{other.Name}' (weight {other.Weight}) goes first.");
            }
        }

        return freeSlots == 0
            ? new JobExplanation(id, WaitReason.NoFreeSlot, "Every execution slot is busy; it is next in line for its tenant and priority.")
            : new JobExplanation(id, WaitReason.Queued, "It is about to be scheduled.");
    }

    private bool TryTakeFromBand(Band band, out QueuedJob job)
    {
        job = null!;
        var found = false;
        while (band.Turns.TryNext(out var tenant))
        {
            if (tenant.Count == 0)
            {
                continue;
            }

            var node = FirstAdmissible(tenant);
            if (node is null)
            {
                _skipped.Add(tenant);
                continue;
            }

            job = node.Value.Job;
            tenant.Remove(node);
            band.Turns.Served(tenant, tenant.Weight);
            if (tenant.Count > 0)
            {
                band.Turns.Push(tenant);
            }

            found = true;
            break;
        }

        foreach (var tenant in _skipped)
        {
            band.Turns.Push(tenant);
        }

        _skipped.Clear();
        return found;
    }

    /// <summary>
    /// The oldest admissible job of a tenant. Its jobs are kept in flows of the same workload and concurrency key, so
    /// that a flow is blocked exactly when its head is: the scan costs one check per flow, not per job.
    /// </summary>
    private LinkedListNode<Entry>? FirstAdmissible(Tenant tenant)
    {
        if (_options.TenantLimits.TryGetValue(tenant.Name, out var tenantLimit) && IsAtLimit(_runningByTenant, tenant.Name, tenantLimit))
        {
            return null;
        }

        LinkedListNode<Entry>? best = null;
        foreach (var flow in tenant.Flows.Values)
        {
            if (flow.First is { } head && (best is null || head.Value.Sequence < best.Value.Sequence) && BlockedBy(head.Value.Job) == Block.None)
            {
                best = head;
            }
        }

        return best;
    }

    /// <summary>Which limit blocks <paramref name="job"/>; allocation-free, for the decision path.</summary>
    private Block BlockedBy(QueuedJob job)
    {
        if (_options.WorkloadLimits.TryGetValue(job.Workload, out var workloadLimit) && IsAtLimit(_runningByWorkload, job.Workload, workloadLimit))
        {
            return Block.Workload;
        }

        if (_options.TenantLimits.TryGetValue(job.Tenant, out var tenantLimit) && IsAtLimit(_runningByTenant, job.Tenant, tenantLimit))
        {
            return Block.Tenant;
        }

        if (job.ConcurrencyKey is { } key && IsAtLimit(_runningByKey, key, KeyLimit(key)))
        {
            return Block.Key;
        }

        if (_workloadBuckets.Count > 0 && _workloadBuckets.TryGetValue(job.Workload, out var workloadBucket) && !HasToken(workloadBucket))
        {
            return Block.WorkloadRate;
        }

        if (_tenantBuckets.Count > 0 && _tenantBuckets.TryGetValue(job.Tenant, out var tenantBucket) && !HasToken(tenantBucket))
        {
            return Block.TenantRate;
        }

        return Block.None;
    }

    /// <summary>Names a block as <c>kind:name=limit</c>, for explanations only.</summary>
    private string Describe(Block block, QueuedJob job) => block switch
    {
        Block.Workload => $"workload:{job.Workload}={_options.WorkloadLimits[job.Workload]}",
        Block.Tenant => $"tenant:{job.Tenant}={_options.TenantLimits[job.Tenant]}",
        Block.Key => $"key:{job.ConcurrencyKey}={KeyLimit(job.ConcurrencyKey!)}",
        Block.WorkloadRate => $"rate:workload:{job.Workload}={_workloadBuckets[job.Workload].Rate.PerSecond}/s",
        _ => $"rate:tenant:{job.Tenant}={_tenantBuckets[job.Tenant].Rate.PerSecond}/s",
    };

    private int KeyLimit(string key) => _options.ConcurrencyKeyLimits.TryGetValue(key, out var limit) ? limit : _options.DefaultConcurrencyKeyLimit;

    private bool HasToken(Bucket bucket)
    {
        var now = _time.GetUtcNow();
        bucket.Refill(now);
        if (bucket.Tokens >= 1)
        {
            return true;
        }

        var at = now + TimeSpan.FromSeconds((1 - bucket.Tokens) / bucket.Rate.PerSecond);
        if (NextRefill is null || at < NextRefill)
        {
            NextRefill = at;
        }

        return false;
    }

    private void Consume(QueuedJob job)
    {
        if (_workloadBuckets.TryGetValue(job.Workload, out var workload))
        {
            workload.Tokens -= 1;
        }

        if (_tenantBuckets.TryGetValue(job.Tenant, out var tenant))
        {
            tenant.Tokens -= 1;
        }
    }

    /// <summary>The starvation guard: moves jobs that waited <see cref="SchedulerOptions.MaxWait"/> up one band.</summary>
    private void Promote()
    {
        if (_options.MaxWait is not { } maxWait)
        {
            return;
        }

        var now = _time.GetUtcNow();
        while (_aging.TryPeek(out var head) && head.Due <= now)
        {
            _aging.Dequeue();
            if (!_pending.TryGetValue(head.Id, out var node) || node.Value.Priority >= JobRequest.MaxPriority)
            {
                continue;
            }

            var entry = node.Value;
            _bands[entry.Priority].Tenants[entry.Job.Tenant].Remove(node);
            Insert(entry.Job, entry.Priority + 1, entry.Sequence);
            if (entry.Priority + 1 < JobRequest.MaxPriority)
            {
                _aging.Enqueue((head.Id, now + maxWait));
            }
        }
    }

    private static bool IsAtLimit(Dictionary<string, int> running, string name, int limit)
        => running.TryGetValue(name, out var count) && count >= limit;

    private void Count(QueuedJob job, int delta)
    {
        RunningCount += delta;
        Add(_runningByWorkload, job.Workload, delta);
        Add(_runningByTenant, job.Tenant, delta);
        if (job.ConcurrencyKey is { } key)
        {
            Add(_runningByKey, key, delta);
        }

        static void Add(Dictionary<string, int> counts, string name, int delta)
        {
            var value = counts.GetValueOrDefault(name) + delta;
            if (value <= 0)
            {
                counts.Remove(name);
            }
            else
            {
                counts[name] = value;
            }
        }
    }

    private sealed class Band
    {
        public Dictionary<string, Tenant> Tenants { get; } = new(StringComparer.Ordinal);

        public WeightedTurns<Tenant> Turns { get; } = new();
    }

    private enum Block
    {
        None,
        Workload,
        Tenant,
        Key,
        WorkloadRate,
        TenantRate,
    }

    private readonly record struct Entry(QueuedJob Job, long Sequence, int Priority);

    private sealed class Bucket(RateLimit rate, DateTimeOffset now)
    {
        private DateTimeOffset _refilled = now;

        public RateLimit Rate { get; } = rate;

        public double Tokens { get; set; } = rate.Burst;

        public void Refill(DateTimeOffset now)
        {
            if (now > _refilled)
            {
                Tokens = Math.Min(Rate.Burst, Tokens + ((now - _refilled).TotalSeconds * Rate.PerSecond));
                _refilled = now;
            }
        }
    }

    private sealed class Tenant(string name, int weight) : ITurnTaker
    {
        public string Name { get; } = name;

        public int Weight { get; set; } = weight;

        public double Pass { get; set; }

        public bool InTurn { get; set; }

        public int Count { get; private set; }

        /// <summary>Gets the tenant's jobs by workload and concurrency key, each flow in arrival order.</summary>
        public Dictionary<(string Workload, string? Key), LinkedList<Entry>> Flows { get; } = [];

        public LinkedListNode<Entry> Add(Entry entry)
        {
            var flowKey = (entry.Job.Workload, entry.Job.ConcurrencyKey);
            if (!Flows.TryGetValue(flowKey, out var flow))
            {
                flow = new LinkedList<Entry>();
                Flows.Add(flowKey, flow);
            }

            Count++;
            if (flow.Last is null || flow.Last.Value.Sequence < entry.Sequence)
            {
                return flow.AddLast(entry);
            }

            // A promoted job keeps its place by arrival: older than the jobs already in the band.
            var next = flow.First!;
            while (next.Value.Sequence < entry.Sequence)
            {
                next = next.Next!;
            }

            return flow.AddBefore(next, entry);
        }

        public void Remove(LinkedListNode<Entry> node)
        {
            // An emptied flow is kept: the same workload and key usually come back, and re-creating it would allocate.
            node.List!.Remove(node);
            Count--;
        }

        public bool HasAdmissible(FairScheduler scheduler) => scheduler.FirstAdmissible(this) is not null;
    }
}
