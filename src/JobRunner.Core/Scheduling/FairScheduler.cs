using System.Diagnostics;
using Microsoft.Extensions.Options;

namespace JobRunner.Scheduling;

/// <summary>
/// Chooses which held job runs next. Strict priority bands (10 first); inside a band, weighted fair share across
/// tenants by stride scheduling (each tenant has a pass; the lowest pass with an admissible job goes, then its pass
/// grows by 1/weight; a tenant that becomes active starts at the band's current pass, so idle time earns no credit and
/// the share of an idle tenant goes to the others; see <see cref="WeightedTurns{T}"/>). Concurrency limits per workload, tenant and concurrency key are
/// checked at admission and given back by <see cref="Release"/>. Affinity is checked once per job, at <see cref="Add(QueuedJob)"/>,
/// against this worker's labels: a job the worker may not run never enters a band (it is declined, then parked, and given
/// back to the queue); a job whose preferred labels the worker lacks waits in its band until its preference wait ends.
/// Jobs without affinity pay one null check. Not thread-safe: the worker calls it under a lock.
/// </summary>
[DebuggerDisplay("Pending = {_pending.Count}, Parked = {_parked.Count}, Running = {RunningCount}")]
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
    // When each held job moves up a band: its id and the sequence of the add (a job taken and added again, a retry, is
    // another add: the first add's entry must not promote it).
    private readonly Queue<(JobId Id, long Sequence, DateTimeOffset Due)> _aging = new();
    private readonly List<Tenant> _skipped = [];
    private readonly IReadOnlyDictionary<string, string> _labels;
    private readonly TimeSpan _declineWindow;
    private readonly Dictionary<string, AffinityFit> _fits = new(StringComparer.Ordinal);
    private readonly Dictionary<JobId, (QueuedJob Job, AffinityFit Fit)> _parked = [];
    private readonly Dictionary<JobId, (DateTimeOffset At, AffinityFit Fit)> _declined = [];
    private readonly Stack<LinkedListNode<Entry>> _freeNodes = new();
    private long _sequence;

    /// <param name="options">The scheduler's settings.</param>
    /// <param name="weights">The tenants' weights; from <paramref name="options"/> when <see langword="null"/>.</param>
    /// <param name="time">The clock.</param>
    /// <param name="labels">This worker's labels (<see cref="WorkerOptions.Labels"/>), for affinity.</param>
    /// <param name="declineWindow">
    /// How long after giving a job back to the queue (it may not run here, or it prefers other workers) a second delivery
    /// of it is kept here instead of being given back at once, so that one worker alone does not spin on it.
    /// </param>
    public FairScheduler(IOptions<SchedulerOptions> options, TenantWeights? weights = null, TimeProvider? time = null, IReadOnlyDictionary<string, string>? labels = null, TimeSpan? declineWindow = null)
    {
        _options = options.Value;
        _labels = labels ?? EmptyLabels;
        _declineWindow = declineWindow ?? TimeSpan.FromSeconds(10);
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

    private static IReadOnlyDictionary<string, string> EmptyLabels { get; } = new Dictionary<string, string>(0);

    /// <summary>Gets how many jobs wait in the bands (parked jobs are not counted).</summary>
    public int PendingCount => _pending.Count;

    /// <summary>Gets how many jobs this worker holds that it may not run, until it gives them back to the queue.</summary>
    public int ParkedCount => _parked.Count;

    public int RunningCount { get; private set; }

    /// <summary>
    /// Gets when a blocked job may next become admissible (a rate limit refills, a preference wait ends), after a take
    /// that found nothing; else <see langword="null"/>.
    /// </summary>
    public DateTimeOffset? NextWake { get; private set; }

    /// <summary>Adds every job held here, waiting in a band or parked, to <paramref name="into"/>.</summary>
    public void CopyHeld(List<QueuedJob> into)
    {
        foreach (var node in _pending.Values)
        {
            into.Add(node.Value.Job);
        }

        foreach (var parked in _parked.Values)
        {
            into.Add(parked.Job);
        }
    }

    /// <summary>Adds every job waiting in a band (not the parked ones, which this worker may not run) to <paramref name="into"/>.</summary>
    public void CopyPending(List<QueuedJob> into)
    {
        foreach (var node in _pending.Values)
        {
            into.Add(node.Value.Job);
        }
    }

    /// <summary>Gets a job held here, waiting in a band or parked.</summary>
    public bool TryGetHeld(JobId id, out QueuedJob job)
    {
        if (_pending.TryGetValue(id, out var node))
        {
            job = node.Value.Job;
            return true;
        }

        if (_parked.TryGetValue(id, out var parked))
        {
            job = parked.Job;
            return true;
        }

        job = null!;
        return false;
    }

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

    /// <summary>
    /// Holds a ready job until it is chosen, unless its affinity keeps it off this worker. A job already held is ignored.
    /// </summary>
    /// <returns>What became of the job; the caller gives a <see cref="Admission.Declined"/> one back to the queue now.</returns>
    public Admission Add(QueuedJob job) => Add(job, out _);

    /// <summary>
    /// Holds a ready job until it is chosen, unless its affinity keeps it off this worker. A second delivery of a job
    /// already held (pending or parked) replaces the first: queues track the newest delivery (a redelivered SQS message
    /// has a new receipt; the in-memory queue's in-flight entry is the newest), so that is the one to give back or
    /// acknowledge later, and <paramref name="dropped"/> is the older one, to acknowledge now.
    /// </summary>
    /// <param name="job">The delivery.</param>
    /// <param name="dropped">For <see cref="Admission.Duplicate"/>, the older delivery to acknowledge; <see langword="null"/> when the same delivery came twice.</param>
    /// <returns>What became of the job; the caller gives a <see cref="Admission.Declined"/> one back to the queue now.</returns>
    public Admission Add(QueuedJob job, out QueuedJob? dropped)
    {
        dropped = null;
        if (_pending.TryGetValue(job.Id, out var held))
        {
            dropped = ReferenceEquals(held.Value.Job, job) ? null : held.Value.Job;
            held.Value = held.Value with { Job = job };
            return Admission.Duplicate;
        }

        DateTimeOffset? preferDue = null;
        if (job.Affinity is not null)
        {
            var fit = FitOf(job.Affinity);
            if (!fit.IsPreferred)
            {
                if (_parked.TryGetValue(job.Id, out var parked))
                {
                    dropped = ReferenceEquals(parked.Job, job) ? null : parked.Job;
                    _parked[job.Id] = (job, parked.Fit);
                    return Admission.Duplicate;
                }

                var now = _time.GetUtcNow();
                var due = job.EnqueuedAt + _options.PreferenceWait;
                if (!fit.Capable || due > now)
                {
                    // Given back at once the first time, so that a capable (or preferred) worker can take it; a second
                    // delivery soon after means no such worker took it: keep it here instead of spinning on it.
                    var recent = _declined.TryGetValue(job.Id, out var declined) && now - declined.At < _declineWindow;
                    if (!recent)
                    {
                        _declined[job.Id] = (now, fit);
                        return Admission.Declined;
                    }

                    if (!fit.Capable)
                    {
                        _parked.Add(job.Id, (job, fit));
                        return Admission.Parked;
                    }

                    preferDue = due;
                }

                _declined.Remove(job.Id);
            }
        }

        var priority = Math.Clamp(job.Priority, JobRequest.MinPriority, JobRequest.MaxPriority);
        var sequence = ++_sequence;
        if (_options.MaxWait is { } maxWait && priority < JobRequest.MaxPriority)
        {
            // Entries of jobs taken (or given back) stay until their due time; with a long MaxWait and jobs taken at
            // once they would pile up (a day at 100 jobs/s: ~8.6M). Dropped when they outnumber the held jobs twice:
            // each compaction keeps at most one entry per held job, so its cost is paid by the adds before it.
            if (_aging.Count > (2 * _pending.Count) + MinAgingCompaction)
            {
                CompactAging();
            }

            _aging.Enqueue((job.Id, sequence, _time.GetUtcNow() + maxWait));
        }

        Insert(new Entry(job, sequence, priority, preferDue));
        return Admission.Held;
    }

    /// <summary>
    /// Moves the parked jobs (which this worker may not run) to <paramref name="into"/>, to be given back to the queue for
    /// other workers, and forgets declines older than twice the decline window.
    /// </summary>
    public void TakeParked(List<QueuedJob> into)
    {
        var now = _time.GetUtcNow();
        foreach (var (id, parked) in _parked)
        {
            into.Add(parked.Job);
            _declined[id] = (now, parked.Fit);
        }

        _parked.Clear();
        if (_declined.Count > _parked.Count)
        {
            List<JobId>? stale = null;
            foreach (var (id, declined) in _declined)
            {
                if (now - declined.At >= _declineWindow * 2)
                {
                    (stale ??= []).Add(id);
                }
            }

            foreach (var id in stale ?? [])
            {
                _declined.Remove(id);
            }
        }
    }

    /// <summary>How a job's affinity fits this worker: parsed and evaluated once per distinct expression.</summary>
    private AffinityFit FitOf(string affinity)
    {
        if (_fits.TryGetValue(affinity, out var fit))
        {
            return fit;
        }

        if (_fits.Count >= MaxCachedFits)
        {
            _fits.Clear();
        }

        var errors = new List<string>(0);
        fit = AffinityExpression.Parse(affinity, errors) is { } expression
            ? expression.Evaluate(_labels)
            : new AffinityFit(Capable: false, Term: affinity, Detail: "its affinity is malformed: " + errors[0]);
        _fits.Add(affinity, fit);
        return fit;
    }

    private const int MaxCachedFits = 4096;

    /// <summary>How many starvation-guard entries beyond twice the held jobs are let be before they are compacted.</summary>
    private const int MinAgingCompaction = 64;

    /// <summary>The furthest ahead a rate limit's next token is looked for (3,650 days), so that the time cannot overflow.</summary>
    private const double MaxTokenWaitSeconds = 3650.0 * 86_400;

    /// <summary>How many removed nodes are kept for reuse (a held job's node is otherwise an allocation per job).</summary>
    private const int MaxFreeNodes = 1024;

    // Emptied flows a tenant keeps for reuse; past this many flows, an emptied one is dropped.
    private const int MaxFlowsKept = 16;

    private void Insert(Entry entry)
    {
        var job = entry.Job;
        var priority = entry.Priority;
        var band = _bands[priority];
        if (!band.Tenants.TryGetValue(job.Tenant, out var tenant))
        {
            if (band.Tenants.Count >= band.SweepAt)
            {
                band.DropIdleTenants();
            }

            tenant = new Tenant(job.Tenant, _weights.WeightOf(job.Tenant), _freeNodes);
            band.Tenants.Add(job.Tenant, tenant);
        }

        band.Turns.Join(tenant);

        _pending[job.Id] = tenant.Add(entry);
    }

    /// <summary>Removes a held job that will not run here (returned to the queue).</summary>
    public bool Remove(JobId id) => TryRemove(id, out _, out _);

    /// <summary>
    /// Removes a held job, waiting in a band or parked, without choosing it: its tenant's turn is not spent and no limit
    /// or rate token is counted (a job cancelled while it waited here, or given back to the queue).
    /// </summary>
    /// <param name="id">The job.</param>
    /// <param name="job">The delivery that was held, to acknowledge or give back.</param>
    /// <param name="pending">Whether it waited in a band (it took room in the lookahead) rather than parked.</param>
    /// <returns>Whether the job was held here.</returns>
    public bool TryRemove(JobId id, out QueuedJob job, out bool pending)
    {
        if (!_pending.Remove(id, out var node))
        {
            pending = false;
            if (_parked.Remove(id, out var parked))
            {
                job = parked.Job;
                return true;
            }

            job = null!;
            return false;
        }

        pending = true;
        job = node.Value.Job;
        _bands[node.Value.Priority].Tenants[job.Tenant].Remove(node);

        // An emptied tenant stays in the band's heap until a take pops and drops it (uncharged: see TryTakeFromBand).
        return true;
    }

    /// <summary>Chooses the next job to run, and counts it as running.</summary>
    public bool TryTake(out QueuedJob job)
    {
        Promote();
        NextWake = null;
        for (var priority = JobRequest.MaxPriority; priority >= JobRequest.MinPriority; priority--)
        {
            var band = _bands[priority];
            if (band.Turns.Count > 0 && TryTakeFromBand(band, out job))
            {
                _pending.Remove(job.Id);
                if (_declined.Count > 0)
                {
                    _declined.Remove(job.Id);
                }

                Count(job, +1);
                Consume(job);
                return true;
            }
        }

        job = null!;
        return false;
    }

    /// <summary>
    /// Gives back the rate-limit tokens a taken job used, when it did not start after all (its lease was refused: it was
    /// cancelled, finished or taken elsewhere while it waited here). Its limits are still given back by <see cref="Release"/>.
    /// </summary>
    public void Refund(QueuedJob job)
    {
        if (_workloadBuckets.Count > 0 && _workloadBuckets.TryGetValue(job.Workload, out var workload))
        {
            workload.Refund();
        }

        if (_tenantBuckets.Count > 0 && _tenantBuckets.TryGetValue(job.Tenant, out var tenant))
        {
            tenant.Refund();
        }
    }

    /// <summary>Gives back the limits a running job held (after any outcome).</summary>
    public void Release(QueuedJob job) => Count(job, -1);

    /// <summary>Explains why a held job waits; <see langword="null"/> when it is not held.</summary>
    public JobExplanation? Explain(JobId id, int freeSlots)
    {
        if (!_pending.TryGetValue(id, out var node))
        {
            if (_parked.TryGetValue(id, out var parked))
            {
                return NoCapableWorker(id, parked.Job.Affinity, parked.Fit, "it is held here until it is given back to the queue for other workers");
            }

            if (_declined.TryGetValue(id, out var declined))
            {
                return declined.Fit.Capable
                    ? new JobExplanation(id, WaitReason.PreferredWorker, $"This worker gave it back to the queue so that a worker with the preferred label {declined.Fit.Term} gets the first chance ({declined.Fit.Detail}); any capable worker takes it after SchedulerOptions.PreferenceWait.", declined.Fit.Term)
                    : NoCapableWorker(id, null, declined.Fit, "this worker gave it back to the queue for a capable worker");
            }

            return null;
        }

        var job = node.Value.Job;
        var effective = node.Value.Priority;
        var block = BlockedBy(node.Value);
        if (block == Block.Preference)
        {
            var fit = FitOf(job.Affinity!);
            return new JobExplanation(id, WaitReason.PreferredWorker, $"It prefers {fit.Term} and this worker does not match ({fit.Detail}); it runs here from {node.Value.PreferDue:O} (SchedulerOptions.PreferenceWait after it was enqueued) unless a preferred worker takes it first.", fit.Term);
        }

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

    private static JobExplanation NoCapableWorker(JobId id, string? affinity, AffinityFit fit, string where)
        => new(id, WaitReason.NoCapableWorker, $"This worker may not run it: {fit.Detail}{(affinity is null ? "" : $" (affinity '{affinity}')")}; {where}. Required and avoided labels are never relaxed: give a worker the label in WorkerOptions.Labels, or change the job's affinity.", fit.Term);

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

        // A tenant skipped because every job it has is blocked keeps at most one turn of credit (see PushSkipped): it
        // does not bank the turns the others take while it waits behind a limit.
        foreach (var tenant in _skipped)
        {
            band.Turns.PushSkipped(tenant, tenant.Weight);
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
            if (flow.First is { } head && (best is null || head.Value.Sequence < best.Value.Sequence) && BlockedBy(head.Value) == Block.None)
            {
                best = head;
            }
        }

        return best;
    }

    /// <summary>Which limit blocks a job; allocation-free, for the decision path.</summary>
    private Block BlockedBy(in Entry entry)
    {
        var job = entry.Job;
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

        if (entry.PreferDue is { } due && due > _time.GetUtcNow())
        {
            if (NextWake is null || due < NextWake)
            {
                NextWake = due;
            }

            return Block.Preference;
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

        // Capped: a rate below what validation allows (the scheduler built directly) would overflow the time. A wake
        // that comes early finds no token yet and computes the rest.
        var at = now + TimeSpan.FromSeconds(Math.Min((1 - bucket.Tokens) / bucket.Rate.PerSecond, MaxTokenWaitSeconds));
        if (NextWake is null || at < NextWake)
        {
            NextWake = at;
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

    /// <summary>
    /// Drops the starvation guard's entries of jobs no longer held at the sequence they were added with, in place and in
    /// order (so the head is again the earliest due of a held job; no timer is armed from it: promotion runs at each take).
    /// </summary>
    private void CompactAging()
    {
        for (var i = _aging.Count; i > 0; i--)
        {
            var entry = _aging.Dequeue();
            if (_pending.TryGetValue(entry.Id, out var node) && node.Value.Sequence == entry.Sequence && node.Value.Priority < JobRequest.MaxPriority)
            {
                _aging.Enqueue(entry);
            }
        }
    }

    /// <summary>Gets how many entries the starvation guard keeps; for tests.</summary>
    internal int AgingCount => _aging.Count;

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
            if (!_pending.TryGetValue(head.Id, out var node) || node.Value.Sequence != head.Sequence || node.Value.Priority >= JobRequest.MaxPriority)
            {
                continue;
            }

            var entry = node.Value;
            _bands[entry.Priority].Tenants[entry.Job.Tenant].Remove(node);
            Insert(entry with { Priority = entry.Priority + 1 });
            if (entry.Priority + 1 < JobRequest.MaxPriority)
            {
                _aging.Enqueue((head.Id, head.Sequence, now + maxWait));
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

    /// <summary>Gets how many tenants (idle ones included) the bands keep; for tests.</summary>
    internal int TenantCount => _bands.Sum(static b => b.Tenants.Count);

    /// <summary>Gets how many flows (emptied ones included) the bands' tenants keep; for tests.</summary>
    internal int FlowCount => _bands.Sum(static b => b.Tenants.Values.Sum(static t => t.Flows.Count));

    private sealed class Band
    {
        // Tenants kept before the first sweep of idle ones (and at least between two sweeps).
        private const int MinSweepAt = 64;

        public Dictionary<string, Tenant> Tenants { get; } = new(StringComparer.Ordinal);

        public WeightedTurns<Tenant> Turns { get; } = new();

        /// <summary>Gets how many tenants the band may keep before a new one makes it drop its idle ones.</summary>
        public int SweepAt { get; private set; } = MinSweepAt;

        /// <summary>
        /// Drops the tenants that have no job here and are not in line, so that tenants that come and go do not make
        /// the band (and its scans) grow for good. A dropped tenant that comes back is created again with its weight
        /// (from <see cref="TenantWeights"/>) at the band's current pass: what it loses is at most the one turn it was
        /// ahead after its last turn (its pass is at most one turn past the current pass), as when a skipped tenant is
        /// put back. Sweeps happen only when the band has twice the tenants it kept after the last one, so their cost
        /// is paid by the tenants added in between.
        /// </summary>
        public void DropIdleTenants()
        {
            foreach (var (name, tenant) in Tenants)
            {
                if (tenant.Count == 0 && !tenant.InTurn)
                {
                    Tenants.Remove(name);
                }
            }

            SweepAt = Math.Max(MinSweepAt, 2 * Tenants.Count);
        }
    }

    private enum Block
    {
        None,
        Workload,
        Tenant,
        Key,
        WorkloadRate,
        TenantRate,
        Preference,
    }

    /// <summary>A held job. <paramref name="PreferDue"/>: until then it waits for a worker with its preferred labels.</summary>
    private readonly record struct Entry(QueuedJob Job, long Sequence, int Priority, DateTimeOffset? PreferDue = null);

    private sealed class Bucket(RateLimit rate, DateTimeOffset now)
    {
        private DateTimeOffset _refilled = now;

        public RateLimit Rate { get; } = rate;

        public double Tokens { get; set; } = rate.Burst;

        /// <summary>Gives back one token taken by a job that did not start (never above the burst).</summary>
        public void Refund() => Tokens = Math.Min(Rate.Burst, Tokens + 1);

        public void Refill(DateTimeOffset now)
        {
            if (now > _refilled)
            {
                Tokens = Math.Min(Rate.Burst, Tokens + ((now - _refilled).TotalSeconds * Rate.PerSecond));
                _refilled = now;
            }
        }
    }

    private sealed class Tenant(string name, int weight, Stack<LinkedListNode<Entry>> freeNodes) : ITurnTaker
    {
        public string Name { get; } = name;

        public int Weight { get; set; } = weight;

        public double Pass { get; set; }

        public bool InTurn { get; set; }

        public int Count { get; private set; }

        /// <summary>
        /// Gets the tenant's jobs by workload, concurrency key and affinity, each flow in arrival order: the jobs of a flow
        /// are blocked by the same limits and the same preference, so a flow is blocked exactly when its head is.
        /// </summary>
        public Dictionary<(string Workload, string? Key, string? Affinity), LinkedList<Entry>> Flows { get; } = [];

        public LinkedListNode<Entry> Add(Entry entry)
        {
            var flowKey = (entry.Job.Workload, entry.Job.ConcurrencyKey, entry.Job.Affinity);
            if (!Flows.TryGetValue(flowKey, out var flow))
            {
                flow = new LinkedList<Entry>();
                Flows.Add(flowKey, flow);
            }

            Count++;
            if (freeNodes.TryPop(out var node))
            {
                node.Value = entry;
            }
            else
            {
                node = new LinkedListNode<Entry>(entry);
            }

            if (flow.Last is null || flow.Last.Value.Sequence < entry.Sequence)
            {
                flow.AddLast(node);
                return node;
            }

            // A promoted job keeps its place by arrival: older than the jobs already in the band.
            var next = flow.First!;
            while (next.Value.Sequence < entry.Sequence)
            {
                next = next.Next!;
            }

            flow.AddBefore(next, node);
            return node;
        }

        /// <summary>Removes a job's node; the caller has read what it needs from it (the node is reused).</summary>
        public void Remove(LinkedListNode<Entry> node)
        {
            // An emptied flow is kept while the tenant has few (the same workload and key usually come back, and
            // re-creating it would allocate); past that it goes, so that per-job concurrency keys do not leave the
            // tenant's scan (one check per flow) and its memory growing for good.
            var flow = node.List!;
            flow.Remove(node);
            Count--;
            if (flow.Count == 0 && Flows.Count > MaxFlowsKept)
            {
                var job = node.Value.Job;
                Flows.Remove((job.Workload, job.ConcurrencyKey, job.Affinity));
            }

            if (freeNodes.Count < MaxFreeNodes)
            {
                node.Value = default;
                freeNodes.Push(node);
            }
        }

        public bool HasAdmissible(FairScheduler scheduler) => scheduler.FirstAdmissible(this) is not null;
    }
}

/// <summary>What <see cref="FairScheduler.Add(QueuedJob)"/> did with a job.</summary>
internal enum Admission
{
    /// <summary>It waits in its band until it is chosen.</summary>
    Held,

    /// <summary>It was already held: a second delivery.</summary>
    Duplicate,

    /// <summary>Its affinity keeps it off this worker for now: give it back to the queue at once.</summary>
    Declined,

    /// <summary>This worker may not run it and gave it back moments ago: it is kept aside, not in a band, until <see cref="FairScheduler.TakeParked"/>.</summary>
    Parked,
}
