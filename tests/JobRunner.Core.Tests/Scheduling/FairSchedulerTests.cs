using JobRunner.Scheduling;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Scheduling;

public sealed class FairSchedulerTests
{
    private readonly FakeTimeProvider _time = new();
    private readonly SchedulerOptions _options = new();
    private FairScheduler? _scheduler;

    private readonly Dictionary<string, string> _labels = [];

    private FairScheduler Scheduler => _scheduler ??= new FairScheduler(Options.Create(_options), time: _time, labels: _labels);

    private QueuedJob Job(string tenant = "t", int priority = 5, string workload = "w", string? key = null, string? affinity = null) => new()
    {
        Id = JobId.New(_time),
        Priority = priority,
        Tenant = tenant,
        Workload = workload,
        ConcurrencyKey = key,
        Affinity = affinity,
        EnqueuedAt = _time.GetUtcNow(),
    };

    private QueuedJob Take()
    {
        Assert.True(Scheduler.TryTake(out var job), "expected a job to be admissible");
        return job;
    }

    private Dictionary<string, int> TakeCounts(int takes, bool release = true)
    {
        var counts = new Dictionary<string, int>();
        for (var i = 0; i < takes; i++)
        {
            var job = Take();
            counts[job.Tenant] = counts.GetValueOrDefault(job.Tenant) + 1;
            if (release)
            {
                Scheduler.Release(job);
            }
        }

        return counts;
    }

    [Fact]
    public void TryRemove_HeldJob_LeavesWithoutSpendingItsTenantsTurn()
    {
        var a1 = Job("a");
        var a2 = Job("a");
        var b1 = Job("b");
        foreach (var job in new[] { a1, a2, b1 })
        {
            Assert.Equal(Admission.Held, Scheduler.Add(job));
        }

        Assert.True(Scheduler.TryRemove(a1.Id, out var removed, out var pending));

        Assert.Same(a1, removed);
        Assert.True(pending);
        Assert.Equal(2, Scheduler.PendingCount);
        Assert.Null(Scheduler.Explain(a1.Id, freeSlots: 1));
        Assert.False(Scheduler.TryRemove(a1.Id, out _, out _));
        Assert.Equal([a2, b1], new[] { Take(), Take() });
        Assert.Equal(2, Scheduler.RunningCount);
    }

    [Fact]
    public void TryRemove_ParkedJob_IsNotPending()
    {
        _labels["gpu"] = "false";
        var job = Job(affinity: "gpu=true");
        Assert.Equal(Admission.Declined, Scheduler.Add(job));
        Assert.Equal(Admission.Parked, Scheduler.Add(job));

        Assert.True(Scheduler.TryRemove(job.Id, out var removed, out var pending));

        Assert.Same(job, removed);
        Assert.False(pending);
        Assert.Equal(0, Scheduler.ParkedCount);
        var parked = new List<QueuedJob>();
        Scheduler.TakeParked(parked);
        Assert.Empty(parked);
    }

    [Fact]
    public void Ctor_Defaults()
    {
        var options = new SchedulerOptions();

        Assert.Equal([("bronze", 1), ("gold", 4), ("silver", 2)], options.TierWeights.OrderBy(x => x.Key).Select(x => (x.Key, x.Value)));
        Assert.Equal(1, options.DefaultWeight);
        Assert.Equal(1, options.DefaultConcurrencyKeyLimit);
        Assert.Equal(256, options.Lookahead);
        Assert.Empty(options.WorkloadLimits);
        Assert.Empty(options.TenantLimits);
        Assert.Equal(TimeSpan.FromSeconds(1), options.PreferenceWait);
    }

    [Fact]
    public void TryTake_StrictPriority_ThenFifoWithinTenant()
    {
        var low = Job(priority: 1);
        var first = Job(priority: 5);
        var urgent = Job(priority: 10);
        var second = Job(priority: 5);
        foreach (var job in new[] { low, first, urgent, second })
        {
            Scheduler.Add(job);
        }

        Assert.Equal([urgent, first, second, low], Enumerable.Range(0, 4).Select(_ => Take()));
        Assert.False(Scheduler.TryTake(out _));
    }

    [Fact]
    public void TryTake_SaturatedTenantsWeighted4To2To1_GetSharesWithin2Percent()
    {
        _options.TenantTiers["g"] = "gold";
        _options.TenantTiers["s"] = "silver";
        _options.TenantTiers["b"] = "bronze";
        foreach (var tenant in new[] { "g", "s", "b" })
        {
            for (var i = 0; i < 100_000; i++)
            {
                Scheduler.Add(Job(tenant));
            }
        }

        var counts = TakeCounts(100_000);

        Assert.InRange(counts["g"] / 100_000.0, 4 / 7.0 * 0.98, 4 / 7.0 * 1.02);
        Assert.InRange(counts["s"] / 100_000.0, 2 / 7.0 * 0.98, 2 / 7.0 * 1.02);
        Assert.InRange(counts["b"] / 100_000.0, 1 / 7.0 * 0.98, 1 / 7.0 * 1.02);
    }

    [Fact]
    public void TryTake_IdleTenant_ItsShareGoesToTheOthers()
    {
        _options.TenantTiers["g"] = "gold";
        _options.TenantTiers["s"] = "silver";
        _options.TenantTiers["b"] = "bronze";
        for (var i = 0; i < 300; i++)
        {
            Scheduler.Add(Job("s"));
            Scheduler.Add(Job("b"));
        }

        var counts = TakeCounts(300);

        Assert.Equal(200, counts["s"]);
        Assert.Equal(100, counts["b"]);
    }

    [Fact]
    public void TryTake_TenantJoiningLate_GetsNoBankedCredit()
    {
        for (var i = 0; i < 1000; i++)
        {
            Scheduler.Add(Job("busy"));
        }

        TakeCounts(500);
        for (var i = 0; i < 1000; i++)
        {
            Scheduler.Add(Job("late"));
        }

        var counts = TakeCounts(100);

        Assert.InRange(counts["late"], 49, 51);
    }

    [Fact]
    public void TryTake_TenantBlockedByALimitForLong_BanksNoCreditForLater()
    {
        // A submits only long "x" jobs (one at a time: the workload limit), B "y" jobs; A is skipped on every take.
        _options.WorkloadLimits["x"] = 1;
        for (var i = 0; i < 10; i++)
        {
            Scheduler.Add(Job("a", workload: "x"));
        }

        for (var i = 0; i < 2000; i++)
        {
            Scheduler.Add(Job("b", workload: "y"));
        }

        var running = Take();
        Assert.Equal("a", running.Tenant);
        Assert.Equal(1000, TakeCounts(1000)["b"]);

        // Then A submits jobs it may run: it gets its share of the next takes, not the 1,000 turns B took meanwhile.
        for (var i = 0; i < 100; i++)
        {
            Scheduler.Add(Job("a", workload: "y"));
        }

        var counts = TakeCounts(40);

        Assert.InRange(counts.GetValueOrDefault("a"), 19, 22);
        Assert.InRange(counts.GetValueOrDefault("b"), 18, 21);
    }

    [Fact]
    public void TryTake_FloodingTenant_DoesNotDelayAnotherTenantsJob()
    {
        for (var i = 0; i < 100_000; i++)
        {
            Scheduler.Add(Job("flood"));
        }

        TakeCounts(10);
        var other = Job("quiet");
        Scheduler.Add(other);

        // Equal weights: the quiet tenant's job is at most one flood job behind.
        var next = new[] { Take(), Take() };
        Assert.Contains(other, next);
    }

    [Fact]
    public void SetTenantWeight_AtRuntime_ChangesTheShares()
    {
        for (var i = 0; i < 10_000; i++)
        {
            Scheduler.Add(Job("a"));
            Scheduler.Add(Job("b"));
        }

        Assert.Equal(500, TakeCounts(1000)["a"]);
        Scheduler.SetTenantWeight("a", 3);
        var counts = TakeCounts(1000);

        Assert.InRange(counts["a"], 745, 755);
    }

    [Fact]
    public void TryTake_ChurningTenants_TheBandsDoNotKeepThemAll()
    {
        // A steady tenant alongside 10,000 tenants that each come once, at two priorities.
        for (var i = 0; i < 10_000; i++)
        {
            Scheduler.Add(Job("steady"));
            Scheduler.Add(Job("once-" + i, priority: 1 + (i % 2)));
            TakeCounts(2);
        }

        Assert.InRange(Scheduler.TenantCount, 1, 3 * 64);

        // The steady tenant (kept or dropped and created again) still shares evenly with a newcomer.
        for (var i = 0; i < 100; i++)
        {
            Scheduler.Add(Job("steady"));
            Scheduler.Add(Job("new"));
        }

        Assert.InRange(TakeCounts(100)["steady"], 49, 51);
    }

    [Fact]
    public void WorkloadLimit_BlocksUntilReleased_OtherWorkloadsStillRun()
    {
        _options.WorkloadLimits["prewarm"] = 2;
        var p = Enumerable.Range(0, 4).Select(_ => Job(workload: "prewarm")).ToList();
        p.ForEach(j => Scheduler.Add(j));
        var other = Job(workload: "other");
        Scheduler.Add(other);

        var a = Take();
        var b = Take();
        Assert.Equal(other, Take());
        Assert.False(Scheduler.TryTake(out _));
        Assert.Equal(WaitReason.ConcurrencyLimit, Scheduler.Explain(p[2].Id, freeSlots: 1)!.Reason);
        Assert.Equal("workload:prewarm=2", Scheduler.Explain(p[2].Id, freeSlots: 1)!.Limit);

        Scheduler.Release(a);
        Assert.Equal(p[2], Take());
        Assert.Equal([p[0], p[1]], new[] { a, b });
    }

    [Fact]
    public void TenantLimit_BlocksThatTenantOnly()
    {
        _options.TenantLimits["acme"] = 1;
        var a1 = Job("acme");
        var a2 = Job("acme");
        var other = Job("globex");
        Scheduler.Add(a1);
        Scheduler.Add(a2);
        Scheduler.Add(other);

        var taken = new[] { Take(), Take() };

        Assert.Contains(a1, taken);
        Assert.Contains(other, taken);
        Assert.False(Scheduler.TryTake(out _));
        Assert.Equal("tenant:acme=1", Scheduler.Explain(a2.Id, 1)!.Limit);
    }

    [Fact]
    public void ConcurrencyKey_DefaultLimitOne_IsSingletonExecution()
    {
        var first = Job(key: "nightly");
        var second = Job(key: "nightly");
        var unkeyed = Job();
        Scheduler.Add(first);
        Scheduler.Add(second);
        Scheduler.Add(unkeyed);

        Assert.Equal(first, Take());
        Assert.Equal(unkeyed, Take());
        Assert.False(Scheduler.TryTake(out _));
        Scheduler.Release(first);
        Assert.Equal(second, Take());
    }

    [Fact]
    public void ConcurrencyKey_ConfiguredLimit_AllowsThatMany()
    {
        _options.ConcurrencyKeyLimits["pool"] = 3;
        for (var i = 0; i < 5; i++)
        {
            Scheduler.Add(Job(key: "pool"));
        }

        TakeCounts(3, release: false);

        Assert.False(Scheduler.TryTake(out _));
    }

    [Fact]
    public void Explain_HigherPriorityAndTenantShareAndSlots()
    {
        var urgent = Job("a", priority: 9);
        var a1 = Job("a");
        var b1 = Job("b");
        var a2 = Job("a");
        foreach (var job in new[] { urgent, a1, b1, a2 })
        {
            Scheduler.Add(job);
        }

        Assert.Equal(WaitReason.HigherPriority, Scheduler.Explain(a1.Id, 1)!.Reason);
        Take();
        Take();

        Assert.Equal(WaitReason.OverTenantShare, Scheduler.Explain(a2.Id, 1)!.Reason);
        Assert.Contains("tenant 'b'", Scheduler.Explain(a2.Id, 1)!.Message, StringComparison.Ordinal);
        Take();
        Assert.Equal(WaitReason.NoFreeSlot, Scheduler.Explain(a2.Id, 0)!.Reason);
        Assert.Null(Scheduler.Explain(urgent.Id, 0));
    }

    [Fact]
    public void Add_SameJobTwice_IsHeldOnce_AndRemoveForgetsIt()
    {
        var job = Job();

        Assert.Equal(Admission.Held, Scheduler.Add(job));
        Assert.Equal(Admission.Duplicate, Scheduler.Add(job));
        Assert.Equal(1, Scheduler.PendingCount);
        Assert.True(Scheduler.Remove(job.Id));
        Assert.False(Scheduler.TryTake(out _));
        Scheduler.Add(job);
        Assert.Equal(job, Take());
    }

    [Fact]
    public void Add_SecondDeliveryOfAHeldJob_KeepsTheNewerDelivery_AndHandsBackTheOlderToAcknowledge()
    {
        var first = Job();
        var second = first with { EnqueuedAt = first.EnqueuedAt.AddMinutes(1) };

        Assert.Equal(Admission.Held, Scheduler.Add(first));
        Assert.Equal(Admission.Duplicate, Scheduler.Add(second, out var dropped));
        Assert.Same(first, dropped);
        Assert.Equal(Admission.Duplicate, Scheduler.Add(second, out dropped));
        Assert.Null(dropped);

        // The newer delivery is the one a slot takes (and later acknowledges or gives back).
        Assert.Equal(1, Scheduler.PendingCount);
        Assert.True(Scheduler.TryTake(out var taken));
        Assert.Same(second, taken);
    }

    [Fact]
    public void Add_SecondDeliveryOfAParkedJob_KeepsTheNewerDelivery()
    {
        _labels["gpu"] = "false";
        var first = Job(affinity: "gpu=true");
        var second = first with { EnqueuedAt = first.EnqueuedAt.AddSeconds(1) };

        Assert.Equal(Admission.Declined, Scheduler.Add(first));
        Assert.Equal(Admission.Parked, Scheduler.Add(first));
        Assert.Equal(Admission.Duplicate, Scheduler.Add(second, out var dropped));
        Assert.Same(first, dropped);
        var parked = new List<QueuedJob>();
        Scheduler.TakeParked(parked);
        Assert.Same(second, Assert.Single(parked));
    }

    [Fact]
    public void RateLimit_WorkloadBucket_AdmitsBurstThenRefillRate()
    {
        _options.WorkloadRates["api"] = new RateLimit(PerSecond: 2, Burst: 2);
        var jobs = Enumerable.Range(0, 5).Select(_ => Job(workload: "api")).ToList();
        jobs.ForEach(j => Scheduler.Add(j));

        Take();
        Take();
        Assert.False(Scheduler.TryTake(out _));
        Assert.Equal(_time.GetUtcNow().AddSeconds(0.5), Scheduler.NextWake);
        var explanation = Scheduler.Explain(jobs[2].Id, 1)!;
        Assert.Equal((WaitReason.RateLimited, "rate:workload:api=2/s"), (explanation.Reason, explanation.Limit));

        _time.Advance(TimeSpan.FromSeconds(0.5));
        Assert.Equal(jobs[2], Take());
        Assert.False(Scheduler.TryTake(out _));
        _time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(jobs[3], Take());
        Assert.Equal(jobs[4], Take());
    }

    [Fact]
    public void RateLimit_TenantBucket_OtherTenantsUnaffected()
    {
        _options.TenantRates["chatty"] = new RateLimit(PerSecond: 1);
        Scheduler.Add(Job("chatty"));
        Scheduler.Add(Job("chatty"));
        var calm = Job("calm");
        Scheduler.Add(calm);

        var taken = new[] { Take(), Take() };

        Assert.Contains(calm, taken);
        Assert.False(Scheduler.TryTake(out _));
    }

    [Fact]
    public void RateLimit_RateTooLowForATimeSpan_WaitsInsteadOfOverflowing()
    {
        // Below what validation allows (the scheduler built directly): 1/PerSecond seconds overflow a TimeSpan.
        _options.TenantRates["t"] = new RateLimit(PerSecond: 1e-13);
        Scheduler.Add(Job());
        Scheduler.Add(Job());
        Take();

        Assert.False(Scheduler.TryTake(out _));
        Assert.Equal(_time.GetUtcNow() + TimeSpan.FromDays(3650), Scheduler.NextWake);
    }

    [Fact]
    public void MaxWait_PromotesAStarvingJob_AheadOfNewerHigherPriorityJobs()
    {
        _options.MaxWait = TimeSpan.FromMinutes(1);
        var starving = Job(priority: 8);
        Scheduler.Add(starving);
        Scheduler.Add(Job(priority: 9));
        Assert.Equal(9, Take().Priority);

        _time.Advance(TimeSpan.FromMinutes(1));
        for (var i = 0; i < 10; i++)
        {
            Scheduler.Add(Job(priority: 9));
        }

        Assert.Equal(starving, Take());
        Assert.Equal(9, Take().Priority);
    }

    [Fact]
    public void MaxWait_CountsFromTheLatestAdd_OfAJobTakenAndAddedAgain()
    {
        _options.MaxWait = TimeSpan.FromMinutes(1);
        var job = Job(priority: 1);
        Scheduler.Add(job);
        _time.Advance(TimeSpan.FromSeconds(1));
        Scheduler.Release(Take());

        // Retried at once: the same job is added again, and waits beside a newer job one band up.
        _time.Advance(TimeSpan.FromSeconds(1));
        Scheduler.Add(job with { EnqueuedAt = _time.GetUtcNow() });
        var higher = Job(priority: 2);
        Scheduler.Add(higher);

        // A minute after the first add it has waited 58 s: not promoted yet. Two seconds later it is, once.
        _time.Advance(TimeSpan.FromSeconds(58));
        Assert.Equal(higher, Take());
        Scheduler.Add(Job(priority: 2));
        _time.Advance(TimeSpan.FromSeconds(2));
        Assert.Equal(job.Id, Take().Id);
        Assert.Equal(2, Take().Priority);
    }

    [Fact]
    public void PerJobConcurrencyKeys_DoNotLeaveFlowsBehind()
    {
        for (var i = 0; i < 1_000; i++)
        {
            Scheduler.Add(Job(key: $"invoice-{i}"));
            Scheduler.Release(Take());
        }

        Assert.InRange(Scheduler.FlowCount, 1, 17);
    }

    [Fact]
    public void MaxWait_Long_JobsTakenAtOnce_DoNotPileUpInTheStarvationGuard()
    {
        _options.MaxWait = TimeSpan.FromDays(1);
        var old = Job(priority: 4);
        Scheduler.Add(old);
        for (var i = 0; i < 10_000; i++)
        {
            Scheduler.Add(Job(priority: 5));
            Scheduler.Release(Take());
            _time.Advance(TimeSpan.FromMilliseconds(1));
        }

        // One held job: at most twice that plus the slack, not one entry per add.
        Assert.InRange(Scheduler.AgingCount, 1, (2 * Scheduler.PendingCount) + 65);

        // The held job's own entry survived the compactions: it is still promoted after MaxWait.
        _time.Advance(TimeSpan.FromDays(1));
        Scheduler.Add(Job(priority: 5));
        Assert.Equal(old, Take());
    }

    [Fact]
    public void MaxWait_Unset_StrictPriorityStarvesLowerBands()
    {
        var low = Job(priority: 1);
        Scheduler.Add(low);
        Scheduler.Add(Job(priority: 2));
        _time.Advance(TimeSpan.FromDays(1));

        Assert.Equal(2, Take().Priority);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    public void RandomWorkloads_InvariantsHold(int seed)
    {
        var random = new Random(seed);
        _options.WorkloadLimits["w0"] = 2;
        _options.TenantLimits["t0"] = 3;
        _options.ConcurrencyKeyLimits["k1"] = 2;
        _labels["zone"] = "eu";
        _labels["gpu"] = "true";
        var running = new List<QueuedJob>();
        var pending = new List<QueuedJob>();
        var parked = new List<QueuedJob>();

        for (var step = 0; step < 4_000; step++)
        {
            var action = random.Next(11);
            if (action < 4)
            {
                var affinity = s_affinities[random.Next(s_affinities.Length)];
                var job = Job($"t{random.Next(5)}", random.Next(1, 11), $"w{random.Next(3)}", random.Next(4) switch { 0 => "k0", 1 => "k1", _ => null }, affinity);
                var admission = Scheduler.Add(job);
                if (admission == Admission.Declined)
                {
                    // Given back to the queue; with no other worker it comes straight back.
                    Assert.True(affinity is not null && (!Capable(affinity) || !Preferred(affinity)), $"'{affinity}' declined");
                    admission = Scheduler.Add(job);
                }

                // Required and avoided labels decide alone whether a job is ever held for running here.
                Assert.Equal(Capable(affinity) ? Admission.Held : Admission.Parked, admission);
                (admission == Admission.Held ? pending : parked).Add(job);
            }
            else if (action == 10)
            {
                _time.Advance(TimeSpan.FromMilliseconds(random.Next(500)));
            }
            else if (action < 8)
            {
                var admissible = pending.Where(j => Admissible(j, running)).ToList();
                if (Scheduler.TryTake(out var taken))
                {
                    // A required label is never violated, nor an avoided one; never exceeds a limit; strict priority
                    // among admissible jobs.
                    Assert.True(taken.Affinity is null || Capable(taken.Affinity), $"'{taken.Affinity}' ran on a worker without its required labels");
                    Assert.DoesNotContain(taken, parked);
                    Assert.True(Admissible(taken, running), "a limit would be exceeded or a preference wait cut short");
                    Assert.Equal(admissible.Max(j => j.Priority), taken.Priority);
                    pending.Remove(taken);
                    running.Add(taken);
                }
                else
                {
                    // Work-conserving: nothing admissible is left waiting.
                    Assert.Empty(admissible);
                }
            }
            else if (running.Count > 0)
            {
                var done = running[random.Next(running.Count)];
                running.Remove(done);
                Scheduler.Release(done);
            }
        }

        Assert.Equal(pending.Count, Scheduler.PendingCount);
        Assert.Equal(parked.Count, Scheduler.ParkedCount);
    }

    private static readonly string?[] s_affinities = [null, null, null, "gpu=true", "gpu", "zone=us", "!gpu", "ssd", "zone=eu?", "zone=us?", "gpu, ssd?", "!spot", "!zone=us"];

    /// <summary>The model of required and avoided labels, against this worker's labels zone=eu, gpu=true.</summary>
    private static bool Capable(string? affinity) => affinity is null or "gpu=true" or "gpu" or "zone=eu?" or "zone=us?" or "gpu, ssd?" or "!spot" or "!zone=us";

    private static bool Preferred(string? affinity) => affinity is not ("zone=us?" or "gpu, ssd?");

    private bool Admissible(QueuedJob job, List<QueuedJob> running)
        => (Preferred(job.Affinity) || _time.GetUtcNow() >= job.EnqueuedAt + _options.PreferenceWait)
            && running.Count(r => r.Workload == job.Workload) < Limit(_options.WorkloadLimits, job.Workload, int.MaxValue)
            && running.Count(r => r.Tenant == job.Tenant) < Limit(_options.TenantLimits, job.Tenant, int.MaxValue)
            && (job.ConcurrencyKey is null || running.Count(r => r.ConcurrencyKey == job.ConcurrencyKey) < Limit(_options.ConcurrencyKeyLimits, job.ConcurrencyKey, _options.DefaultConcurrencyKeyLimit));

    private static int Limit(IDictionary<string, int> limits, string name, int fallback) => limits.TryGetValue(name, out var limit) ? limit : fallback;
}
