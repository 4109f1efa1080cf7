using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Benchmarks;

/// <summary>
/// What this machine allows an in-memory job pipeline, next to JobRunner, in the same process and the same minutes:
/// <c>dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- ceiling [jobs] [rounds]</c>.
/// Each round runs, one after the other, N items through:
/// <list type="bullet">
/// <item>a raw bounded <see cref="Channel{T}"/> (capacity 4 × slots, as the BenchmarkDotNet baseline) and a raw unbounded one,
/// one producer and 8 consumers, each item a new <see cref="JobId"/>;</item>
/// <item>a minimal job pipeline: the least any job runner with records, leases and fenced completion does per job — a
/// record object and a slot in a dictionary under one lock at submit, an unbounded channel, a lease (state and fence
/// under the lock, a lease object), a cancellation source per attempt, a no-op, and a fenced completion that removes the
/// slot. No validation, scheduler, priorities, limits, events, retention or metrics;</item>
/// <item>JobRunner in memory, submit → completed, singleton no-op workload, 8 slots (the end-to-end harness).</item>
/// </list>
/// </summary>
internal static class Ceiling
{
    private const int Slots = 8;

    public static async Task RunAsync(string[] args)
    {
        var jobs = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000;
        var rounds = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 3;
        await using var harness = await Harness.StartAsync(runner =>
        {
            runner.Services.AddSingleton<EndToEndBenchmarks.NoOpWorkload>();
            runner.ConfigureWorker(w => w.Slots = Slots).AddWorkload<EndToEndBenchmarks.NoOpWorkload>("noop");
        });
        var request = new JobRequest("noop");

        // Warm-up of each, unmeasured.
        await ChannelAsync(jobs / 10, bounded: true);
        await ChannelAsync(jobs / 10, bounded: false);
        await MinimalPipelineAsync(jobs / 10);
        await harness.RunAsync(request, jobs / 10);

        Console.WriteLine($"{jobs:N0} items per run, {Slots} consumers/slots, {Environment.ProcessorCount} cores, server GC {System.Runtime.GCSettings.IsServerGC}");
        Console.WriteLine("round | bounded channel | unbounded channel | minimal pipeline | JobRunner | JobRunner / minimal");
        for (var round = 1; round <= rounds; round++)
        {
            var bounded = await MeasureAsync(() => ChannelAsync(jobs, bounded: true), jobs);
            var unbounded = await MeasureAsync(() => ChannelAsync(jobs, bounded: false), jobs);
            var minimal = await MeasureAsync(() => MinimalPipelineAsync(jobs), jobs);
            var jobRunner = await MeasureAsync(() => harness.RunAsync(request, jobs), jobs);
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{round} | {bounded:N0}/s | {unbounded:N0}/s | {minimal:N0}/s | {jobRunner:N0}/s | {jobRunner / minimal:F2}"));
        }
    }

    private static async Task<double> MeasureAsync(Func<Task> run, int jobs)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        var watch = Stopwatch.StartNew();
        await run();
        return jobs / watch.Elapsed.TotalSeconds;
    }

    private static async Task ChannelAsync(int jobs, bool bounded)
    {
        var channel = bounded
            ? Channel.CreateBounded<JobId>(new BoundedChannelOptions(Slots * 4) { SingleWriter = true })
            : Channel.CreateUnbounded<JobId>(new UnboundedChannelOptions { SingleWriter = true });
        var consumers = new Task[Slots];
        for (var i = 0; i < consumers.Length; i++)
        {
            consumers[i] = Task.Run(async () =>
            {
                var reader = channel.Reader;
                while (await reader.WaitToReadAsync())
                {
                    while (reader.TryRead(out _))
                    {
                        await NoOpAsync();
                    }
                }
            });
        }

        for (var i = 0; i < jobs; i++)
        {
            await channel.Writer.WriteAsync(JobId.New(TimeProvider.System));
        }

        channel.Writer.Complete();
        await Task.WhenAll(consumers);
    }

    private static async Task MinimalPipelineAsync(int jobs)
    {
        var slots = new Dictionary<JobId, MinimalSlot>();
        var gate = new Lock();
        var channel = Channel.CreateUnbounded<MinimalRecord>(new UnboundedChannelOptions { SingleWriter = true });
        var consumers = new Task[Slots];
        for (var i = 0; i < consumers.Length; i++)
        {
            consumers[i] = Task.Run(async () =>
            {
                var reader = channel.Reader;
                while (await reader.WaitToReadAsync())
                {
                    while (reader.TryRead(out var record))
                    {
                        MinimalLease lease;
                        lock (gate)
                        {
                            ref var slot = ref CollectionsMarshal.GetValueRefOrNullRef(slots, record.Id);
                            slot.State = 1;
                            lease = new MinimalLease(record.Id, ++slot.Fence);
                        }

                        using (var attempt = new CancellationTokenSource())
                        {
                            await NoOpAsync();
                        }

                        lock (gate)
                        {
                            ref var slot = ref CollectionsMarshal.GetValueRefOrNullRef(slots, lease.Id);
                            if (slot.Fence == lease.Fence)
                            {
                                slot.State = 2;
                                slots.Remove(lease.Id);
                            }
                        }
                    }
                }
            });
        }

        for (var i = 0; i < jobs; i++)
        {
            var record = new MinimalRecord(JobId.New(TimeProvider.System), "noop", TimeProvider.System.GetUtcNow().UtcTicks);
            lock (gate)
            {
                slots.Add(record.Id, new MinimalSlot { Record = record });
            }

            await channel.Writer.WriteAsync(record);
        }

        channel.Writer.Complete();
        await Task.WhenAll(consumers);
    }

    private static ValueTask NoOpAsync() => ValueTask.CompletedTask;

    private sealed record MinimalRecord(JobId Id, string Workload, long SubmittedTicks);

    private sealed record MinimalLease(JobId Id, long Fence);

    private struct MinimalSlot
    {
        public MinimalRecord Record;
        public int State;
        public long Fence;
    }
}
