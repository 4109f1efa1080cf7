using BenchmarkDotNet.Attributes;
using JobRunner;
using JobRunner.Scheduling;
using Microsoft.Extensions.Options;

namespace JobRunner.Benchmarks;

/// <summary>
/// The cost of one scheduling decision with 10,000 tenants and 100,000 waiting jobs (take the next job, give back its
/// limits, add a new job so the backlog stays the same), against a plain PriorityQueue by (priority, arrival) in the
/// same run.
/// </summary>
[MemoryDiagnoser]
public class SchedulerDecisionBenchmarks
{
    private const int Tenants = 10_000;
    private const int Waiting = 100_000;

    private FairScheduler _scheduler = null!;
    private PriorityQueue<QueuedJob, (int, long)> _naive = null!;
    private long _sequence;

    [GlobalSetup]
    public void Setup()
    {
        var options = new SchedulerOptions();
        for (var t = 0; t < Tenants; t++)
        {
            options.TenantTiers[$"tenant-{t}"] = (t % 3) switch { 0 => "gold", 1 => "silver", _ => "bronze" };
        }

        options.WorkloadLimits["limited"] = 1_000_000;
        _scheduler = new FairScheduler(Options.Create(options));
        _naive = new PriorityQueue<QueuedJob, (int, long)>();
        var random = new Random(42);
        var now = DateTimeOffset.UnixEpoch;
        for (var i = 0; i < Waiting; i++)
        {
            var job = new QueuedJob
            {
                Id = new JobId(Guid.NewGuid()),
                Priority = 1 + random.Next(10),
                Tenant = $"tenant-{random.Next(Tenants)}",
                Workload = i % 2 == 0 ? "limited" : "free",
                EnqueuedAt = now,
            };
            _scheduler.Add(job);
            _naive.Enqueue(job, (-job.Priority, ++_sequence));
        }
    }

    [Benchmark(Baseline = true, Description = "PriorityQueue by priority and arrival (no tenants, no limits)")]
    public QueuedJob NaivePriorityQueue()
    {
        var job = _naive.Dequeue();
        _naive.Enqueue(job, (-job.Priority, ++_sequence));
        return job;
    }

    [Benchmark(Description = "FairScheduler: take, release, add (10k tenants, 100k waiting)")]
    public QueuedJob FairSchedulerDecision()
    {
        _scheduler.TryTake(out var job);
        _scheduler.Release(job);
        _scheduler.Add(job);
        return job;
    }
}
