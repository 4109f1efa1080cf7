using System.Diagnostics;
using System.Diagnostics.Tracing;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Benchmarks;

/// <summary>
/// Where the in-memory end-to-end path allocates (console harness): runs no-op jobs through the same harness as
/// EndToEndBenchmarks while an EventListener samples the runtime's GC AllocationTick events (one per ~100 KB allocated,
/// with the type that crossed the threshold), then prints bytes per job, jobs/s and the sampled types by share.
/// </summary>
internal static class AllocationProfile
{
    public static async Task RunAsync(int jobs, int slots, bool singleton)
    {
        // Submission alone (no worker): the ceiling a single submitting thread puts on the end-to-end rate.
        await using (var submitOnly = await Harness.StartAsync(runner => runner
            .ConfigureWorker(w => w.Enabled = false)
            .AddWorkload<EndToEndBenchmarks.NoOpWorkload>("noop")))
        {
            var request = new JobRequest("noop");
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < jobs; i++)
            {
                await submitOnly.Client.SubmitAsync(request);
            }

            Console.WriteLine($"submit only, one thread, no worker: {jobs / clock.Elapsed.TotalSeconds:N0} jobs/s ({clock.Elapsed.TotalMilliseconds * 1_000_000 / jobs:N0} ns/job)");
        }

        // The worker of the drain and of the end-to-end run: the no-op workload, as a singleton if asked, on its slots.
        void Configure(JobRunnerBuilder runner)
        {
            if (singleton)
            {
                runner.Services.AddSingleton<EndToEndBenchmarks.NoOpWorkload>();
            }

            runner.ConfigureWorker(w => w.Slots = slots).AddWorkload<EndToEndBenchmarks.NoOpWorkload>("noop");
        }

        // Drain alone: the jobs queued with the worker stopped, then the worker started; the ceiling the worker puts on the end-to-end rate.
        await using (var drainOnly = await Harness.StartAsync(Configure, startWorker: false))
        {
            var request = new JobRequest("noop");
            var done = drainOnly.Counter.Expect(jobs);
            for (var i = 0; i < jobs; i++)
            {
                await drainOnly.Client.SubmitAsync(request);
            }

            var clock = Stopwatch.StartNew();
            await drainOnly.StartWorkerAsync();
            await done;
            Console.WriteLine($"drain only, {slots} slots, {jobs:N0} queued before the worker started: {jobs / clock.Elapsed.TotalSeconds:N0} jobs/s ({clock.Elapsed.TotalMilliseconds * 1_000_000 / jobs:N0} ns/job)");
        }

        if (Environment.GetEnvironmentVariable("BENCH_DRAIN_ONLY") == "1")
        {
            return;
        }

        await using var harness = await Harness.StartAsync(Configure);
        await harness.RunAsync(new JobRequest("noop"), Math.Min(jobs, 50_000));

        using var listener = new AllocationListener();
        var before = GC.GetTotalAllocatedBytes(precise: true);
        var stopwatch = Stopwatch.StartNew();
        await harness.RunAsync(new JobRequest("noop"), jobs);
        var elapsed = stopwatch.Elapsed;
        var allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        listener.Stop();

        Console.WriteLine($"{jobs:N0} no-op jobs ({(singleton ? "singleton" : "transient")} workload), {slots} slots: {jobs / elapsed.TotalSeconds:N0} jobs/s, {elapsed.TotalMilliseconds * 1_000_000 / jobs:N0} ns/job, {allocated / (double)jobs:N0} B/job, gen0 {GC.CollectionCount(0)}, gen1 {GC.CollectionCount(1)}, gen2 {GC.CollectionCount(2)}");
        var total = listener.Samples.Values.Sum();
        foreach (var (type, bytes) in listener.Samples.OrderByDescending(static p => p.Value).Take(30))
        {
            Console.WriteLine($"  {bytes * 100.0 / total,5:F1} %  ~{allocated * (bytes / (double)total) / jobs,6:N0} B/job  {type}");
        }
    }

    private sealed class AllocationListener : EventListener
    {
        private volatile bool _stopped;

        public Dictionary<string, long> Samples { get; } = [];

        public void Stop() => _stopped = true;

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "Microsoft-Windows-DotNETRuntime")
            {
                EnableEvents(eventSource, EventLevel.Verbose, (EventKeywords)0x1);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (_stopped || !eventData.EventName!.StartsWith("GCAllocationTick", StringComparison.Ordinal) || eventData.Payload is null)
            {
                return;
            }

            var type = eventData.PayloadNames!.IndexOf("TypeName") is var t and >= 0 ? eventData.Payload[t] as string ?? "?" : "?";
            var amount = eventData.PayloadNames.IndexOf("AllocationAmount64") is var a and >= 0 ? Convert.ToInt64(eventData.Payload[a], System.Globalization.CultureInfo.InvariantCulture) : 100_000;
            lock (Samples)
            {
                Samples[type] = Samples.GetValueOrDefault(type) + amount;
            }
        }
    }
}
