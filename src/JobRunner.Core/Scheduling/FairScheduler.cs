using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// Chooses which held job runs next. Strict priority bands (10 first); inside a band, weighted fair share across
/// tenants by stride scheduling (each tenant has a pass; the lowest pass with an admissible job goes, then its pass
/// grows by 1/weight; a tenant that becomes active starts at the band's current pass, so idle time earns no credit and
/// the share of an idle tenant goes to the others). Concurrency limits per workload, tenant and concurrency key are
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
    private readonly List<Tenant> _skipped = [];
    private long _sequence;

    public FairScheduler(IOptions<SchedulerOptions> options, TenantWeights? weights = null)
    {
        _options = options.Value;
        _weights = weights ?? new TenantWeights(options);
        for (var i = 0; i < _bands.Length; i++)
        {
            _bands[i] = new Band();
        }
    }

    public int PendingCount => _pending.Count;

    public int RunningCount { get; private set; }

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

        var band = _bands[Math.Clamp(job.Priority, JobRequest.MinPriority, JobRequest.MaxPriority)];
        if (!band.Tenants.TryGetValue(job.Tenant, out var tenant))
        {
            tenant = new Tenant(job.Tenant, WeightOf(job.Tenant));
            band.Tenants.Add(job.Tenant, tenant);
        }

        if (!tenant.InHeap)
        {
            // A tenant that becomes active starts at the band's current pass: waiting earns no credit.
            tenant.Pass = Math.Max(tenant.Pass, band.VirtualTime);
            Push(band, tenant);
        }

        _pending.Add(job.Id, tenant.Add(new Entry(job, ++_sequence)));
        return true;
    }

    /// <summary>Removes a held job that will not run here (returned to the queue).</summary>
    public bool Remove(JobId id)
    {
        if (!_pending.Remove(id, out var node))
        {
            return false;
        }

        var band = _bands[Math.Clamp(node.Value.Job.Priority, JobRequest.MinPriority, JobRequest.MaxPriority)];
        band.Tenants[node.Value.Job.Tenant].Remove(node);

        // An emptied tenant stays in the band's heap until a take pops and drops it.
        return true;
    }

    /// <summary>Chooses the next job to run, and counts it as running.</summary>
    public bool TryTake(out QueuedJob job)
    {
        for (var priority = JobRequest.MaxPriority; priority >= JobRequest.MinPriority; priority--)
        {
            var band = _bands[priority];
            if (band.Active.Count > 0 && TryTakeFromBand(band, out job))
            {
                _pending.Remove(job.Id);
                Count(job, +1);
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
        if (BlockedBy(job) is { } limit)
        {
            return new JobExplanation(id, WaitReason.ConcurrencyLimit, $"The concurrency limit {limit} is reached; it runs when one of those attempts ends.", limit);
        }

        for (var priority = JobRequest.MaxPriority; priority > job.Priority; priority--)
        {
            foreach (var tenant in _bands[priority].Tenants.Values)
            {
                if (tenant.HasAdmissible(this))
                {
                    return new JobExplanation(id, WaitReason.HigherPriority, $"Jobs of priority {priority} are ahead of it (it has priority {job.Priority}).");
                }
            }
        }

        var band = _bands[job.Priority];
        var own = band.Tenants[job.Tenant];
        foreach (var other in band.Tenants.Values)
        {
            if (other != own && other.Pass < own.Pass && other.HasAdmissible(this))
            {
                return new JobExplanation(id, WaitReason.OverTenantShare, $"Tenant '{job.Tenant}' (weight {own.Weight}) used its share of priority {job.Priority}; tenant '{other.Name}' (weight {other.Weight}) goes first.");
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
        while (band.Active.TryDequeue(out var tenant, out _))
        {
            tenant.InHeap = false;
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
            band.VirtualTime = Math.Max(band.VirtualTime, tenant.Pass);
            tenant.Pass += 1.0 / tenant.Weight;
            if (tenant.Count > 0)
            {
                Push(band, tenant);
            }

            found = true;
            break;
        }

        foreach (var tenant in _skipped)
        {
            Push(band, tenant);
        }

        _skipped.Clear();
        return found;
    }

    private static void Push(Band band, Tenant tenant)
    {
        tenant.InHeap = true;
        band.Active.Enqueue(tenant, (tenant.Pass, ++band.Sequence));
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
            if (flow.First is { } head && (best is null || head.Value.Sequence < best.Value.Sequence) && BlockedBy(head.Value.Job) is null)
            {
                best = head;
            }
        }

        return best;
    }

    /// <summary>The limit that blocks <paramref name="job"/>, as <c>kind:name=limit</c>, or <see langword="null"/>.</summary>
    private string? BlockedBy(QueuedJob job)
    {
        if (_options.WorkloadLimits.TryGetValue(job.Workload, out var workloadLimit) && IsAtLimit(_runningByWorkload, job.Workload, workloadLimit))
        {
            return $"workload:{job.Workload}={workloadLimit}";
        }

        if (_options.TenantLimits.TryGetValue(job.Tenant, out var tenantLimit) && IsAtLimit(_runningByTenant, job.Tenant, tenantLimit))
        {
            return $"tenant:{job.Tenant}={tenantLimit}";
        }

        if (job.ConcurrencyKey is { } key)
        {
            var keyLimit = _options.ConcurrencyKeyLimits.TryGetValue(key, out var l) ? l : _options.DefaultConcurrencyKeyLimit;
            if (IsAtLimit(_runningByKey, key, keyLimit))
            {
                return $"key:{key}={keyLimit}";
            }
        }

        return null;
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

    private int WeightOf(string tenant) => _weights.WeightOf(tenant);

    private sealed class Band
    {
        public Dictionary<string, Tenant> Tenants { get; } = new(StringComparer.Ordinal);

        public PriorityQueue<Tenant, (double Pass, long Sequence)> Active { get; } = new();

        public double VirtualTime { get; set; }

        public long Sequence { get; set; }
    }

    private readonly record struct Entry(QueuedJob Job, long Sequence);

    private sealed class Tenant(string name, int weight)
    {
        public string Name { get; } = name;

        public int Weight { get; set; } = weight;

        public double Pass { get; set; }

        public bool InHeap { get; set; }

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
            return flow.AddLast(entry);
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
