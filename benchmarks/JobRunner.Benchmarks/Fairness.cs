using System.Collections.Concurrent;
using System.Diagnostics;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Benchmarks;

/// <summary>
/// End-to-end fairness through the in-memory path (queue → scheduler → worker → store), as a console harness:
/// <c>dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- fairness</c>.
/// </summary>
internal static class Fairness
{
    public static async Task RunAsync()
    {
        await SharesAsync();
        await FloodAsync();
    }

    /// <summary>Three saturated tenants weighted 4:2:1: the shares of the first 100,000 completions.</summary>
    private static async Task SharesAsync()
    {
        const int Measured = 100_000;
        var order = new ConcurrentQueue<string>();
        await using var host = await StartAsync(order, s =>
        {
            s.TenantTiers["gold"] = "gold";
            s.TenantTiers["silver"] = "silver";
            s.TenantTiers["bronze"] = "bronze";
        });

        // Saturated: each tenant has more waiting than it can get in the measured window.
        foreach (var tenant in new[] { "gold", "silver", "bronze" })
        {
            var request = new JobRequest("noop") { Tenant = tenant };
            for (var i = 0; i < Measured; i++)
            {
                await host.Client.SubmitAsync(request);
            }
        }

        var watch = Stopwatch.StartNew();
        await host.StartWorkerAsync();
        await host.WaitForCompletionsAsync(Measured);
        watch.Stop();
        var counts = order.Take(Measured).GroupBy(t => t).ToDictionary(g => g.Key, g => g.Count());
        Console.WriteLine($"Shares of the first {Measured:N0} completions, tenants weighted gold 4 : silver 2 : bronze 1 (8 slots, {watch.Elapsed.TotalSeconds:F1} s):");
        foreach (var (tenant, weight) in new[] { ("gold", 4), ("silver", 2), ("bronze", 1) })
        {
            var share = counts.GetValueOrDefault(tenant) / (double)Measured;
            var target = weight / 7.0;
            Console.WriteLine($"  {tenant,-7} {counts.GetValueOrDefault(tenant),7:N0}  share {share:P2}  target {target:P2}  deviation {(share - target) / target:+0.00%;-0.00%;0.00%}");
        }
    }

    /// <summary>A tenant floods 1,000,000 jobs; another tenant's one job: how many flood jobs complete before it.</summary>
    private static async Task FloodAsync()
    {
        const int Flood = 1_000_000;
        var order = new ConcurrentQueue<string>();
        await using var host = await StartAsync(order, _ => { });
        var request = new JobRequest("noop") { Tenant = "flood" };
        for (var i = 0; i < Flood; i++)
        {
            await host.Client.SubmitAsync(request);
        }

        await host.StartWorkerAsync();
        await host.WaitForCompletionsAsync(Flood / 10);
        var before = order.Count;
        var quiet = await host.Client.SubmitAsync(new JobRequest("noop") { Tenant = "quiet" });
        await host.WaitForTenantAsync(order, "quiet");
        var after = order.ToArray();
        var floodBetween = after.Skip(before).TakeWhile(t => t != "quiet").Count();
        Console.WriteLine($"Flood: tenant 'flood' submitted {Flood:N0} jobs; {before:N0} had completed when tenant 'quiet' submitted one job.");
        Console.WriteLine($"  flood jobs completed between the quiet job's submit and its completion: {floodBetween} (8 slots, lookahead 256; equal weights)");
        _ = quiet;
    }

    private static async Task<FairnessHost> StartAsync(ConcurrentQueue<string> order, Action<SchedulerOptions> scheduler)
    {
        var services = new ServiceCollection();
        services.AddJobRunner(runner => runner
            .ConfigureWorker(w => w.Slots = 8)
            .ConfigureScheduler(scheduler)
            .UseInMemory(m => m.MaxFinishedJobs = 2_000_000)
            .AddWorkload<EndToEndBenchmarks.NoOpWorkload>("noop"));
        var inner = services.Last(d => d.ServiceType == typeof(IJobStore));
        var counter = new CompletionCounter();
        services.Replace(ServiceDescriptor.Singleton<IJobStore>(sp => new CountingStore((IJobStore)inner.ImplementationFactory!(sp), counter, order)));
        await Task.CompletedTask;
        return new FairnessHost(services.BuildServiceProvider(), counter);
    }

    private sealed class FairnessHost(ServiceProvider services, CompletionCounter counter) : IAsyncDisposable
    {
        private readonly IHostedService _worker = services.GetServices<IHostedService>().Single();

        public IJobClient Client { get; } = services.GetRequiredService<IJobClient>();

        public Task StartWorkerAsync() => _worker.StartAsync(CancellationToken.None);

        public Task WaitForCompletionsAsync(int count) => counter.Expect(count);

        public async Task WaitForTenantAsync(ConcurrentQueue<string> order, string tenant)
        {
            while (!order.Contains(tenant))
            {
                await Task.Delay(1);
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _worker.StopAsync(CancellationToken.None);
            await services.DisposeAsync();
        }
    }
}
