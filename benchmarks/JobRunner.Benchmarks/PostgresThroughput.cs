using System.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Npgsql;

namespace JobRunner.Benchmarks;

/// <summary>
/// End-to-end numbers for the PostgreSQL store and queue (console harness):
/// a raw batched SKIP LOCKED loop as the baseline, bulk and single enqueue, drain of no-op jobs (durable and with
/// synchronous_commit off for worker writes), and idle enqueue → start latency across two hosts (the NOTIFY path).
/// Needs JOBRUNNER_TEST_POSTGRES; benchmarks/postgres.sh starts a throwaway server and runs this.
/// </summary>
internal static class PostgresThroughput
{
    private static int s_inFlight = 1;

    public static async Task RunAsync(int jobs, int inFlight = 1, string? only = null)
    {
        s_inFlight = inFlight;
        var connectionString = Environment.GetEnvironmentVariable("JOBRUNNER_TEST_POSTGRES")
            ?? throw new InvalidOperationException("Set JOBRUNNER_TEST_POSTGRES, or run benchmarks/postgres.sh.");
        Console.WriteLine($"PostgreSQL end to end, {jobs:N0} jobs, {Environment.ProcessorCount} cores, {inFlight} batches of leases and of completions in flight, {new JobRunner.Storage.Postgres.PostgresOptions().InsertBatchesInFlight} of inserts");

        // Warm up every path first (JIT tiering, connection pools, the server's caches): a 30,000-job drain lasts a few
        // seconds, and a cold process spends a large part of them compiling.
        if (only == "latency")
        {
            // Idle enqueue -> start only: on one pair of hosts, one unmeasured round (the hosts' first jobs open their
            // connections and compile their code), then `jobs` rounds of 1,000 samples, each split into the submit
            // call (insert and commit) and the rest (NOTIFY, wake-up, dequeue, lease, start).
            await using var hosts = await LatencyHosts.StartAsync(connectionString);
            var cold = await hosts.MeasureAsync(300);
            Console.WriteLine($"  unmeasured first round after the hosts start: first job {cold.First:F2} ms, p99 {cold.P99:F2} ms, max {cold.Max:F2} ms");
            for (var round = 0; round < jobs; round++)
            {
                var sample = await hosts.MeasureAsync(1000, verbose: true);
                Console.WriteLine($"idle enqueue -> start: p50 {sample.P50:F2} ms, p99 {sample.P99:F2} ms, max {sample.Max:F2} ms");
            }

            return;
        }

        var warmUp = jobs;
        await RawLoopAsync(connectionString, warmUp);
        await DrainAsync(connectionString, warmUp, durable: true, quiet: true);
        if (only != "drain")
        {
            await EnqueueAsync(connectionString, warmUp, bulk: true);
            await EnqueueAsync(connectionString, warmUp, bulk: false);
        }

        var raw = await RawLoopAsync(connectionString, jobs);
        Console.WriteLine($"baseline: raw batched SKIP LOCKED loop (4 consumers, 100 per batch, one tx each): {raw:N0} jobs/s");
        if (only == "drain")
        {
            var durableDrain = await DrainAsync(connectionString, jobs, durable: true);
            Console.WriteLine($"drain no-op jobs (synchronous commit for workers on): {durableDrain:N0} jobs/s ({durableDrain / raw:F2}x baseline)");
            return;
        }

        var bulk = await EnqueueAsync(connectionString, jobs, bulk: true);
        Console.WriteLine($"enqueue bulk (InsertMany, durable): {bulk:N0} jobs/s ({bulk / raw:F2}x baseline)");
        var single = await EnqueueAsync(connectionString, Math.Min(jobs, 20_000), bulk: false);
        Console.WriteLine($"enqueue single (SubmitAsync, 16 producers, durable): {single:N0} jobs/s ({single / raw:F2}x baseline)");

        foreach (var durable in new[] { true, false })
        {
            var drain = await DrainAsync(connectionString, jobs, durable);
            Console.WriteLine($"drain no-op jobs (synchronous commit for workers {(durable ? "on" : "off")}): {drain:N0} jobs/s ({drain / raw:F2}x baseline)");
        }

        await using var latencyHosts = await LatencyHosts.StartAsync(connectionString);
        await latencyHosts.MeasureAsync(300);
        var (p50, p99, max, _) = await latencyHosts.MeasureAsync(1000);
        Console.WriteLine($"idle enqueue -> start, submitter and worker in separate hosts: p50 {p50:F2} ms, p99 {p99:F2} ms, max {max:F2} ms");
    }

    private static async Task<double> RawLoopAsync(string connectionString, int jobs)
    {
        await using var source = NpgsqlDataSource.Create(connectionString);
        await Exec(source, "DROP TABLE IF EXISTS bench_raw; CREATE TABLE bench_raw (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state smallint NOT NULL DEFAULT 0, payload bytea); CREATE INDEX ON bench_raw (id) WHERE state = 0;");
        await Exec(source, $"INSERT INTO bench_raw (payload) SELECT '\\x00' FROM generate_series(1, {jobs})");
        var stopwatch = Stopwatch.StartNew();
        var consumers = Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                await using var connection = await source.OpenConnectionAsync();
                await using var tx = await connection.BeginTransactionAsync();
                await using var command = new NpgsqlCommand("UPDATE bench_raw SET state = 1 WHERE id IN (SELECT id FROM bench_raw WHERE state = 0 ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)", connection, tx);
                var n = await command.ExecuteNonQueryAsync();
                await tx.CommitAsync();
                if (n == 0)
                {
                    return;
                }
            }
        })).ToArray();
        await Task.WhenAll(consumers);
        var rate = jobs / stopwatch.Elapsed.TotalSeconds;
        await Exec(source, "DROP TABLE bench_raw");
        return rate;
    }

    private static async Task<double> EnqueueAsync(string connectionString, int jobs, bool bulk)
    {
        await using var bench = await BenchHost.StartAsync(connectionString, worker: false, durable: true);
        var cpu = CpuSeconds();
        var stopwatch = Stopwatch.StartNew();
        if (bulk)
        {
            var client = bench.Host.Services.GetRequiredService<IJobClient>();
            for (var offset = 0; offset < jobs; offset += 10_000)
            {
                await client.SubmitManyAsync(Requests(Math.Min(jobs, offset + 10_000) - offset));
            }
        }
        else
        {
            var client = bench.Host.Services.GetRequiredService<IJobClient>();
            var next = 0;
            await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
            {
                while (Interlocked.Increment(ref next) <= jobs)
                {
                    await client.SubmitAsync(new JobRequest("noop"));
                }
            })));
        }

        var rate = jobs / stopwatch.Elapsed.TotalSeconds;
        var used = CpuSeconds();
        Console.WriteLine($"  CPU during the enqueue ({stopwatch.Elapsed.TotalSeconds:F2} s): this process {used.Self - cpu.Self:F2} s, PostgreSQL {used.Postgres - cpu.Postgres:F2} s");
        return rate;
    }

    private static async Task<double> DrainAsync(string connectionString, int jobs, bool durable, bool quiet = false)
    {
        // Enqueue first (not timed), then start the worker and time until the last completion is committed.
        await using var bench = await BenchHost.StartAsync(connectionString, worker: false, durable: durable);
        await bench.Host.Services.GetRequiredService<IJobClient>().SubmitManyAsync(Requests(jobs));
        await using var worker = await BenchHost.StartAsync(connectionString, worker: true, durable: durable, schema: bench.Schema, startNow: false);
        var done = 0;
        var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var events = worker.Host.Services.GetRequiredService<IJobEventBus>();
        using var stop = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            await foreach (var e in events.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, stop.Token))
            {
                if (e.State == JobState.Succeeded && Interlocked.Increment(ref done) == jobs)
                {
                    all.TrySetResult();
                }
            }
        });
        var cpu = CpuSeconds();
        var stopwatch = Stopwatch.StartNew();
        await worker.Host.StartAsync();
        await all.Task.WaitAsync(TimeSpan.FromMinutes(10));
        var rate = jobs / stopwatch.Elapsed.TotalSeconds;
        var used = CpuSeconds();
        if (!quiet)
        {
            Console.WriteLine($"  CPU during the drain ({stopwatch.Elapsed.TotalSeconds:F2} s): this process {used.Self - cpu.Self:F2} s, PostgreSQL {used.Postgres - cpu.Postgres:F2} s");
        }
        await stop.CancelAsync();
        await watcher.ContinueWith(static _ => { });
        return rate;
    }

    /// <summary>A submitting host and a worker host sharing one schema, for idle enqueue -> start rounds.</summary>
    private sealed class LatencyHosts(BenchHost submitter, BenchHost worker) : IAsyncDisposable
    {
        public static async Task<LatencyHosts> StartAsync(string connectionString)
        {
            var submitter = await BenchHost.StartAsync(connectionString, worker: false, durable: true);
            var worker = await BenchHost.StartAsync(connectionString, worker: true, durable: true, schema: submitter.Schema);
            return new LatencyHosts(submitter, worker);
        }

        public Task<(double P50, double P99, double Max, double First)> MeasureAsync(int samples, bool verbose = false)
            => LatencyAsync(submitter, worker, samples, verbose);

        public async ValueTask DisposeAsync()
        {
            await worker.DisposeAsync();
            await submitter.DisposeAsync();
        }
    }

    private static async Task<(double P50, double P99, double Max, double First)> LatencyAsync(BenchHost submitter, BenchHost worker, int samples, bool verbose)
    {
        var client = submitter.Host.Services.GetRequiredService<IJobClient>();
        var started = worker.Host.Services.GetRequiredService<StartSignal>();
        var latencies = new double[samples];
        var submits = new double[samples];
        var rests = new double[samples];
        var at0 = Stopwatch.GetTimestamp();
        var offsets = new double[samples];
        for (var i = 0; i < samples; i++)
        {
            var signal = started.Next();
            var before = Stopwatch.GetTimestamp();
            offsets[i] = Stopwatch.GetElapsedTime(at0, before).TotalMilliseconds;
            await client.SubmitAsync(new JobRequest("noop"));
            var submitted = Stopwatch.GetTimestamp();
            var at = await signal.WaitAsync(TimeSpan.FromSeconds(30));
            latencies[i] = Stopwatch.GetElapsedTime(before, at).TotalMilliseconds;
            submits[i] = Stopwatch.GetElapsedTime(before, submitted).TotalMilliseconds;
            rests[i] = at > submitted ? Stopwatch.GetElapsedTime(submitted, at).TotalMilliseconds : 0;
            // Idle between samples: the worker waits for the NOTIFY again.
            await Task.Delay(TimeSpan.FromMilliseconds(5), TimeProvider.System);
        }

        // BENCH_DUMP=file: each sample as "ms since the round began, latency, submit call" (to look at the tail's timing).
        if (verbose && Environment.GetEnvironmentVariable("BENCH_DUMP") is { Length: > 0 } dump)
        {
            await File.AppendAllLinesAsync(dump, Enumerable.Range(0, samples).Select(i => string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{offsets[i]:F1},{latencies[i]:F3},{submits[i]:F3}")));
        }

        if (verbose)
        {
            Array.Sort(submits);
            Array.Sort(rests);
            Console.WriteLine($"  submit call: p50 {submits[samples / 2]:F2} p90 {submits[(int)(samples * 0.9)]:F2} p99 {submits[(int)(samples * 0.99) - 1]:F2} ms; submit returned -> start: p50 {rests[samples / 2]:F2} p90 {rests[(int)(samples * 0.9)]:F2} p99 {rests[(int)(samples * 0.99) - 1]:F2} ms");
        }

        var first = latencies[0];
        Array.Sort(latencies);
        return (latencies[samples / 2], latencies[(int)(samples * 0.99) - 1], latencies[^1], first);
    }

    /// <summary>CPU seconds used so far by this process and by every process named postgres (Linux /proc).</summary>
    private static (double Self, double Postgres) CpuSeconds()
    {
        var self = Process.GetCurrentProcess().TotalProcessorTime.TotalSeconds;
        var postgres = 0.0;
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var close = stat.LastIndexOf(')');
                if (close < 0 || !stat.AsSpan(0, close).EndsWith("(postgres", StringComparison.Ordinal))
                {
                    continue;
                }

                // After "pid (comm) ": state is field 3, utime and stime are fields 14 and 15 (clock ticks).
                var fields = stat[(close + 2)..].Split(' ');
                postgres += (long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture)) / 100.0;
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return (self, postgres);
    }

    private static JobRequest[] Requests(int count)
    {
        // BENCH_TENANTS=n: the jobs spread round-robin over n tenants (the dequeue visits tenants one by one).
        var tenants = Environment.GetEnvironmentVariable("BENCH_TENANTS") is { } n ? int.Parse(n, System.Globalization.CultureInfo.InvariantCulture) : 1;
        var shared = Enumerable.Range(0, tenants).Select(t => tenants == 1 ? new JobRequest("noop") : new JobRequest("noop") { Tenant = "tenant-" + t.ToString("D5", System.Globalization.CultureInfo.InvariantCulture) }).ToArray();
        var requests = new JobRequest[count];
        for (var i = 0; i < count; i++)
        {
            requests[i] = shared[i % tenants];
        }

        return requests;
    }

    private static async Task Exec(NpgsqlDataSource source, string sql)
    {
        await using var command = source.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
    }

    internal sealed class StartSignal
    {
        private TaskCompletionSource<long> _next = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public Task<long> Next()
        {
            _next = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            return _next.Task;
        }

        public void Started() => _next.TrySetResult(Stopwatch.GetTimestamp());
    }

    private sealed class NoOp(StartSignal signal) : IWorkload
    {
        public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
        {
            signal.Started();
            return ValueTask.CompletedTask;
        }
    }

    private sealed class BenchHost : IAsyncDisposable
    {
        private BenchHost(IHost host, string schema, bool started)
        {
            Host = host;
            Schema = schema;
            Started = started;
        }

        public IHost Host { get; }

        public string Schema { get; }

        private bool Started { get; }

        public static async Task<BenchHost> StartAsync(string connectionString, bool worker, bool durable, string? schema = null, bool startNow = true)
        {
            schema ??= "bench_" + Guid.NewGuid().ToString("N")[..8];
            if (Environment.GetEnvironmentVariable("BENCH_PREPARE") is { } prepare)
            {
                connectionString += ";Max Auto Prepare=" + prepare;
            }

            // Further connection string settings to probe, e.g. ";No Reset On Close=true".
            connectionString += Environment.GetEnvironmentVariable("BENCH_CONNECTION") ?? string.Empty;

            var builder = Microsoft.Extensions.Hosting.Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
            builder.Services.AddSingleton<StartSignal>();
            builder.Services.AddJobRunner(r => r
                .UsePostgres(connectionString, o =>
                {
                    o.Schema = schema;
                    o.SynchronousCommitForWorkers = durable;
                    o.MaxBatchSize = Environment.GetEnvironmentVariable("BENCH_BATCH") is { } size ? int.Parse(size, System.Globalization.CultureInfo.InvariantCulture) : 1000;
                    o.MaxBatchesInFlight = s_inFlight;
                    o.WriteHistory = Environment.GetEnvironmentVariable("BENCH_HISTORY") != "0";
                    if (!o.WriteHistory || Environment.GetEnvironmentVariable("BENCH_RELAY") == "0")
                    {
                        // The relay reads the history; the drain counts the worker host's own events.
                        o.EventRelayInterval = null;
                    }

                    if (Environment.GetEnvironmentVariable("BENCH_INSERTS") is { } inserts)
                    {
                        o.InsertBatchesInFlight = int.Parse(inserts, System.Globalization.CultureInfo.InvariantCulture);
                    }
                })
                .ConfigureWorker(w =>
                {
                    w.Enabled = worker;
                    w.Slots = 256;
                })
                .AddWorkload<NoOp>("noop", w => w.Retry = RetryPolicy.None));
            var host = builder.Build();
            if (startNow)
            {
                await host.StartAsync();
            }
            else
            {
                // Migrate now, so the timed part starts with the worker.
                await host.Services.GetRequiredService<IJobClient>().GetAsync(default);
            }

            return new BenchHost(host, schema, startNow);
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                await Host.StopAsync();
            }
            finally
            {
                Host.Dispose();
            }
        }
    }
}
