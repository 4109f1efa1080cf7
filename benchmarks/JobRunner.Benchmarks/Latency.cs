using System.Diagnostics;
using System.Globalization;
using System.Threading.Channels;
using JobRunner;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Benchmarks;

/// <summary>
/// Enqueue → start latency through the in-memory path at half of the measured maximum throughput, open loop, 8 slots:
/// <c>dotnet run -c Release --project benchmarks/JobRunner.Benchmarks -- latency [jobs] [rounds]</c>.
/// First the maximum: N no-op jobs submitted as fast as possible and run to completion (the end-to-end benchmark's loop).
/// Then N jobs submitted on a fixed schedule at half that rate, whatever happens to earlier ones (open loop), each
/// stamped when its workload starts. Baseline in the same run: a raw bounded <see cref="Channel{T}"/> with 8 consumers
/// fed on the same schedule. Latency is counted from the scheduled submit time (so a producer that falls behind shows),
/// and also from the actual call.
/// </summary>
internal static class Latency
{
    private const int Slots = 8;

    // BENCH_NEW_REQUEST=1: a new JobRequest per submit, as an application that builds each job's request would; the
    // store keeps each finished job's request, so the collector has that much more to copy.
    private static readonly bool NewRequests = Environment.GetEnvironmentVariable("BENCH_NEW_REQUEST") == "1";

    public static async Task RunAsync(string[] args)
    {
        var jobs = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 200_000;
        var rounds = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 3;
        var stamps = new StartStamps(jobs);
        await using var harness = await Harness.StartAsync(runner =>
        {
            runner.Services.AddSingleton(stamps);
            runner.ConfigureWorker(w => w.Slots = Slots).AddWorkload<StampWorkload>("stamp");
        });
        var request = new JobRequest("stamp");

        // Warm-up, then the maximum (best of the rounds).
        await harness.RunAsync(request, jobs / 4);
        var max = 0.0;
        for (var round = 0; round < rounds; round++)
        {
            stamps.Reset();
            var watch = Stopwatch.StartNew();
            await harness.RunAsync(request, jobs);
            max = Math.Max(max, jobs / watch.Elapsed.TotalSeconds);
        }

        var rate = max / 2;
        Console.WriteLine($"Maximum throughput, in-memory submit → completed, {Slots} slots: {max:N0} jobs/s (best of {rounds} rounds of {jobs:N0}).");
        Console.WriteLine($"Open loop at 50 %: {rate:N0} jobs/s, {jobs:N0} jobs per round, {rounds} rounds, {Environment.ProcessorCount} cores.");

        // An unmeasured open-loop round of each first: the open loop's own code (the paced producer) starts cold, and its
        // first round measured a ~13 ms p99 for both sides where the next rounds measured ~1 ms.
        await ChannelAsync(jobs / 4, rate);
        stamps.Reset();
        await JobRunnerAsync(harness, request, stamps, jobs / 4, rate, quiet: true);

        var results = new List<(Result Channel, Result JobRunner)>();
        for (var round = 0; round < rounds; round++)
        {
            var channel = await ChannelAsync(jobs, rate);
            stamps.Reset();
            var jobRunner = await JobRunnerAsync(harness, request, stamps, jobs, rate);
            results.Add((channel, jobRunner));
        }

        Console.WriteLine();
        Console.WriteLine("| round | scenario | p50 | p90 | p99 | p99.9 | max | p99 from the call | achieved rate | p99 ratio |");
        Console.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (var i = 0; i < results.Count; i++)
        {
            var (channel, jobRunner) = results[i];
            Console.WriteLine(channel.Row(i + 1, "raw bounded Channel<T>, 8 consumers (baseline)", 1.0));
            Console.WriteLine(jobRunner.Row(i + 1, "JobRunner in-memory, submit → workload start", jobRunner.P(0.99) / channel.P(0.99)));
        }
    }

    private static async Task<Result> JobRunnerAsync(Harness harness, JobRequest request, StartStamps stamps, int jobs, double rate, bool quiet = false)
    {
        var scheduled = new long[jobs];
        var called = new long[jobs];
        var ids = new JobId[jobs];
        var done = harness.Counter.Expect(jobs);
        var interval = Stopwatch.Frequency / rate;
        var gcs = GC.CollectionCount(0);
        var paused = GC.GetTotalPauseDuration();
        var start = Stopwatch.GetTimestamp();
        for (var i = 0; i < jobs; i++)
        {
            scheduled[i] = start + (long)(i * interval);
            WaitUntil(scheduled[i]);
            called[i] = Stopwatch.GetTimestamp();
            ids[i] = (await harness.Client.SubmitAsync(NewRequests ? new JobRequest(request.Workload) : request)).Id;
        }

        var elapsed = Stopwatch.GetElapsedTime(start);
        await done;
        if (quiet)
        {
            return new Result([0], [0], 0);
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"JobRunner round: {GC.CollectionCount(0) - gcs} GCs, paused {(GC.GetTotalPauseDuration() - paused).TotalMilliseconds:N1} ms of {elapsed.TotalMilliseconds:N0} ms"));
        foreach (var kind in new[] { GCKind.Ephemeral, GCKind.FullBlocking, GCKind.Background })
        {
            var info = GC.GetGCMemoryInfo(kind);
            if (info.Index > 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  last {kind} GC: gen {info.Generation}, paused {info.PauseDurations[0].TotalMilliseconds:N2} ms, promoted {info.PromotedBytes / 1024:N0} KB, heap {info.HeapSizeBytes / 1048576:N0} MB, gen0 before {info.GenerationInfo[0].SizeBeforeBytes / 1024:N0} KB"));
            }
        }
        var started = stamps.ToDictionary();
        var fromSchedule = new double[jobs];
        var fromCall = new double[jobs];
        for (var i = 0; i < jobs; i++)
        {
            var at = started[ids[i]];
            fromSchedule[i] = Microseconds(at - scheduled[i]);
            fromCall[i] = Microseconds(at - called[i]);
        }

        return new Result(fromSchedule, fromCall, jobs / elapsed.TotalSeconds);
    }

    private static async Task<Result> ChannelAsync(int jobs, double rate)
    {
        var scheduled = new long[jobs];
        var called = new long[jobs];
        var started = new long[jobs];
        var channel = Channel.CreateBounded<int>(new BoundedChannelOptions(Slots * 4) { SingleWriter = true });
        var consumers = new Task[Slots];
        for (var c = 0; c < consumers.Length; c++)
        {
            consumers[c] = Task.Run(async () =>
            {
                var reader = channel.Reader;
                while (await reader.WaitToReadAsync())
                {
                    while (reader.TryRead(out var index))
                    {
                        started[index] = Stopwatch.GetTimestamp();
                    }
                }
            });
        }

        var interval = Stopwatch.Frequency / rate;
        var start = Stopwatch.GetTimestamp();
        for (var i = 0; i < jobs; i++)
        {
            scheduled[i] = start + (long)(i * interval);
            WaitUntil(scheduled[i]);
            called[i] = Stopwatch.GetTimestamp();
            await channel.Writer.WriteAsync(i);
        }

        var elapsed = Stopwatch.GetElapsedTime(start);
        channel.Writer.Complete();
        await Task.WhenAll(consumers);
        var fromSchedule = new double[jobs];
        var fromCall = new double[jobs];
        for (var i = 0; i < jobs; i++)
        {
            fromSchedule[i] = Microseconds(started[i] - scheduled[i]);
            fromCall[i] = Microseconds(started[i] - called[i]);
        }

        return new Result(fromSchedule, fromCall, jobs / elapsed.TotalSeconds);
    }

    /// <summary>Waits for the next scheduled submit, giving the core to the workers meanwhile (2 cores are shared).</summary>
    private static void WaitUntil(long timestamp)
    {
        while (Stopwatch.GetTimestamp() < timestamp)
        {
            Thread.Yield();
        }
    }

    private static double Microseconds(long ticks) => ticks * 1_000_000.0 / Stopwatch.Frequency;

    private sealed class Result
    {
        private readonly double[] _fromSchedule;
        private readonly double[] _fromCall;

        public Result(double[] fromSchedule, double[] fromCall, double rate)
        {
            _fromSchedule = fromSchedule;
            _fromCall = fromCall;
            Array.Sort(_fromSchedule);
            Array.Sort(_fromCall);
            Rate = rate;
        }

        public double Rate { get; }

        public double P(double quantile) => At(_fromSchedule, quantile);

        public string Row(int round, string name, double ratio)
            => string.Create(CultureInfo.InvariantCulture, $"| {round} | {name} | {P(0.5):N1} µs | {P(0.9):N1} µs | {P(0.99):N1} µs | {P(0.999):N1} µs | {_fromSchedule[^1]:N0} µs | {At(_fromCall, 0.99):N1} µs | {Rate:N0}/s | {ratio:N2} |");

        private static double At(double[] sorted, double quantile) => sorted[Math.Min(sorted.Length - 1, (int)(quantile * sorted.Length))];
    }

    /// <summary>When each job's workload started, by job id; preallocated, one slot per start.</summary>
    internal sealed class StartStamps(int capacity)
    {
        private readonly (JobId Id, long At)[] _stamps = new (JobId, long)[capacity * 2];
        private int _count;

        public void Add(JobId id)
        {
            var index = Interlocked.Increment(ref _count) - 1;
            if (index < _stamps.Length)
            {
                _stamps[index] = (id, Stopwatch.GetTimestamp());
            }
        }

        public void Reset() => _count = 0;

        public Dictionary<JobId, long> ToDictionary()
        {
            var count = Math.Min(_count, _stamps.Length);
            var map = new Dictionary<JobId, long>(count);
            for (var i = 0; i < count; i++)
            {
                map[_stamps[i].Id] = _stamps[i].At;
            }

            return map;
        }
    }

    public sealed class StampWorkload(StartStamps stamps) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            stamps.Add(context.JobId);
            return ValueTask.CompletedTask;
        }
    }
}
