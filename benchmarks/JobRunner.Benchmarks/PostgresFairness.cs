using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>
/// Tenant fairness through the PostgreSQL queue, end to end (console harness): one worker host, jobs that each take a
/// few milliseconds, so that the backlog lasts. Two scenarios, each in a schema of its own:
/// <list type="bullet">
/// <item>flood: one tenant's backlog waits, the worker is busy with it, then another tenant submits a few jobs; how long
/// they wait to start, and how many of the flood's jobs start before them;</item>
/// <item>weights: a gold (4) and a bronze (1) tenant, both with a backlog submitted alternately; the share of gold among the
/// first completions while both still have work.</item>
/// </list>
/// Needs JOBRUNNER_TEST_POSTGRES; benchmarks/postgres.sh fairness starts a throwaway server and runs this.
/// </summary>
internal static class PostgresFairness
{
    private const int Slots = 16;
    private static readonly TimeSpan s_jobTime = TimeSpan.FromMilliseconds(2);

    public static async Task RunAsync(int flood)
    {
        var connectionString = Environment.GetEnvironmentVariable("JOBRUNNER_TEST_POSTGRES")
            ?? throw new InvalidOperationException("Set JOBRUNNER_TEST_POSTGRES, or run benchmarks/postgres.sh fairness.");
        Console.WriteLine($"PostgreSQL tenant fairness, {Slots} slots, jobs of {s_jobTime.TotalMilliseconds} ms, {Environment.ProcessorCount} cores");
        await FloodAsync(connectionString, flood, victims: 20);
        await WeightsAsync(connectionString, perTenant: flood / 2, measured: flood / 4);
    }

    private static async Task FloodAsync(string connectionString, int flood, int victims)
    {
        await using var bench = await StartAsync(connectionString);
        var host = bench.Host;
        var client = host.Services.GetRequiredService<IJobClient>();
        var starts = host.Services.GetRequiredService<StartLog>();
        await client.SubmitManyAsync(Enumerable.Repeat(new JobRequest("work") { Tenant = "flood" }, flood).ToArray());
        await host.StartAsync();

        // Let the worker get busy with the flood, then submit the other tenant's jobs.
        var busy = Math.Min(flood / 10, 1000);
        await starts.WaitForAsync(busy);
        var floodBefore = starts.Count;
        var submitted = Stopwatch.GetTimestamp();
        await client.SubmitManyAsync(Enumerable.Repeat(new JobRequest("work") { Tenant = "victim" }, victims).ToArray());
        await starts.WaitForTenantAsync("victim", victims, TimeSpan.FromMinutes(5));

        var log = starts.Snapshot();
        var victimStarts = log.Where(s => s.Tenant == "victim").Select(s => Stopwatch.GetElapsedTime(submitted, s.At).TotalMilliseconds).Order().ToArray();
        var lastVictim = log.FindLastIndex(s => s.Tenant == "victim");
        var floodBetween = log.Take(lastVictim).Count(s => s.Tenant == "flood") - floodBefore;
        Console.WriteLine($"flood: {flood:N0} jobs of tenant 'flood' queued first, then {victims} of tenant 'victim' once {floodBefore:N0} had started");
        Console.WriteLine($"  victim wait to start: first {victimStarts[0]:N0} ms, median {victimStarts[victims / 2]:N0} ms, last {victimStarts[^1]:N0} ms; flood jobs started meanwhile: {floodBetween:N0} of {flood - floodBefore:N0} still waiting");
    }

    private static async Task WeightsAsync(string connectionString, int perTenant, int measured)
    {
        await using var bench = await StartAsync(connectionString, s => s.TenantTiers["gold"] = "gold");
        var host = bench.Host;
        var client = host.Services.GetRequiredService<IJobClient>();
        var starts = host.Services.GetRequiredService<StartLog>();
        var requests = new JobRequest[perTenant * 2];
        for (var i = 0; i < requests.Length; i++)
        {
            requests[i] = new JobRequest("work") { Tenant = i % 2 == 0 ? "bronze" : "gold" };
        }

        await client.SubmitManyAsync(requests);
        await host.StartAsync();
        await starts.WaitForAsync(measured);

        var first = starts.Snapshot().Take(measured).ToList();
        var gold = first.Count(s => s.Tenant == "gold");
        Console.WriteLine($"weights: gold (4) and bronze (1), {perTenant:N0} jobs each submitted alternately; of the first {measured:N0} started, gold {gold:N0} ({gold * 100.0 / measured:F1} %, target 80.0 %)");
    }

    private static async Task<Bench> StartAsync(string connectionString, Action<SchedulerOptions>? scheduler = null)
    {
        var schema = "fair_" + Guid.NewGuid().ToString("N")[..8];
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddSingleton<StartLog>();
        builder.Services.AddJobRunner(r =>
        {
            r.UsePostgres(connectionString, o => o.Schema = schema)
                .ConfigureWorker(w => w.Slots = Slots)
                .AddWorkload<TimedWorkload>("work", w => w.Retry = RetryPolicy.None);
            if (scheduler is not null)
            {
                r.ConfigureScheduler(scheduler);
            }
        });
        var host = builder.Build();

        // Migrate now; the worker starts when the scenario says.
        await host.Services.GetRequiredService<IJobClient>().GetAsync(default);
        return new Bench(host);
    }

    private sealed class Bench(IHost host) : IAsyncDisposable
    {
        public IHost Host => host;

        public async ValueTask DisposeAsync()
        {
            try
            {
                await host.StopAsync();
            }
            finally
            {
                host.Dispose();
            }
        }
    }

    private sealed class TimedWorkload(StartLog log) : IWorkload
    {
        public async ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            log.Started(context.Request.Tenant);
            await Task.Delay(s_jobTime, TimeProvider.System, cancellationToken);
        }
    }

    /// <summary>Every start, in order, with its tenant.</summary>
    private sealed class StartLog
    {
        private readonly List<(string Tenant, long At)> _starts = [];
        private readonly Dictionary<string, int> _byTenant = [];
        private readonly List<(string? Tenant, int Count, TaskCompletionSource Signal)> _waiters = [];

        public int Count
        {
            get
            {
                lock (_starts)
                {
                    return _starts.Count;
                }
            }
        }

        public void Started(string tenant)
        {
            lock (_starts)
            {
                _starts.Add((tenant, Stopwatch.GetTimestamp()));
                _byTenant[tenant] = _byTenant.GetValueOrDefault(tenant) + 1;
                _waiters.RemoveAll(w => Reached(w.Tenant, w.Count) && w.Signal.TrySetResult());
            }
        }

        public Task WaitForAsync(int starts) => Wait(null, starts, TimeSpan.FromMinutes(5));

        public Task WaitForTenantAsync(string tenant, int starts, TimeSpan limit) => Wait(tenant, starts, limit);

        public List<(string Tenant, long At)> Snapshot()
        {
            lock (_starts)
            {
                return [.. _starts];
            }
        }

        private bool Reached(string? tenant, int count) => (tenant is null ? _starts.Count : _byTenant.GetValueOrDefault(tenant)) >= count;

        private Task Wait(string? tenant, int count, TimeSpan limit)
        {
            var signal = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_starts)
            {
                if (Reached(tenant, count))
                {
                    return Task.CompletedTask;
                }

                _waiters.Add((tenant, count, signal));
            }

            return signal.Task.WaitAsync(limit);
        }
    }
}
