using System.Diagnostics;
using JobRunner.Testing;
using Xunit.Abstractions;

namespace JobRunner.Storage.Postgres.Tests;

/// <summary>
/// Four worker processes share one database; a driver SIGKILLs a random one every few seconds and restarts it, and
/// restarts PostgreSQL itself once. At the end every job is terminal, none completed twice, every resumed attempt
/// started from the last checkpoint saved before it, and no write with a stale fence token was accepted.
/// It runs alone (its collection disables parallelization): the database restart would otherwise cut the connections,
/// and the notifications, of tests that run beside it on the same server.
/// </summary>
[Collection(FleetCollection.Name)]
public sealed class FleetReliabilityTests(ITestOutputHelper output) : IAsyncLifetime
{
    private const int JobCount = 20_000;
    private const int Workers = 4;
    private readonly PostgresTestDatabase _database = new();

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Jobs_survive_killed_workers_and_a_database_restart()
    {
        var restart = Environment.GetEnvironmentVariable("JOBRUNNER_TEST_POSTGRES_RESTART")
            ?? throw new InvalidOperationException("JOBRUNNER_TEST_POSTGRES_RESTART is not set. Run the tests with ./test.sh.");
        var time = TimeProvider.System;
        var (db, store, _, _) = _database.OpenStore(time);
        await db.EnsureMigratedAsync(default);
        await _database.ExecuteAsync("""
            CREATE TABLE {s}.fleet_starts (job_id uuid, attempt int, fence bigint, seen_step int, seen_fence bigint);
            CREATE TABLE {s}.fleet_checkpoints (job_id uuid, attempt int, step int);
            """);

        // 20,000 jobs: a tenth checkpoint through 5 steps, a tenth fail their first attempt, the rest are short.
        var now = time.GetUtcNow();
        var jobs = new List<JobRecord>(JobCount);
        for (var i = 0; i < JobCount; i++)
        {
            var steps = i % 10 == 0 ? 5 : 0;
            var failFirst = i % 10 == 1 ? 1 : 0;
            jobs.Add(new JobRecord
            {
                Id = JobId.New(time),
                Request = new JobRequest("fleet") { Input = System.Text.Encoding.UTF8.GetBytes($"{steps},{failFirst}"), Tenant = "t" + (i % 3) },
                State = JobState.Queued,
                CreatedAt = now,
                UpdatedAt = now,
            });
        }

        await store.InsertManyAsync(jobs, default);
        var workers = new Process?[Workers];
        var kills = 0;
        var restarted = false;
        var stopwatch = Stopwatch.StartNew();
        try
        {
            for (var i = 0; i < Workers; i++)
            {
                workers[i] = StartWorker(i);
            }

            var random = new Random(42);
            while (await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs WHERE state < 3") is var open && open > 0)
            {
                Assert.True(stopwatch.Elapsed < TimeSpan.FromMinutes(6), $"{open} jobs still open after {stopwatch.Elapsed}.");

                // The chaos schedule (not synchronization): every 2-4 seconds one worker dies.
                await Task.Delay(TimeSpan.FromMilliseconds(2000 + random.Next(2000)), TimeProvider.System);
                var victim = random.Next(Workers);
                workers[victim]!.Kill();
                await workers[victim]!.WaitForExitAsync();
                workers[victim]!.Dispose();
                workers[victim] = StartWorker(victim);
                kills++;

                if (!restarted && open < JobCount * 2 / 3)
                {
                    output.WriteLine($"restarting PostgreSQL with {open} jobs open");
                    using var pgctl = Process.Start(new ProcessStartInfo("bash", ["-c", restart]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
                    await pgctl.WaitForExitAsync();
                    Assert.Equal(0, pgctl.ExitCode);
                    restarted = true;

                    // This test's own pooled connections died with the server.
                    Npgsql.NpgsqlConnection.ClearAllPools();
                }
            }
        }
        finally
        {
            foreach (var worker in workers)
            {
                if (worker is { HasExited: false })
                {
                    worker.Kill();
                    await worker.WaitForExitAsync();
                }

                worker?.Dispose();
            }
        }

        var elapsed = stopwatch.Elapsed;
        var terminal = await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs WHERE state >= 3");
        var succeeded = await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs WHERE state = 3");
        var lost = JobCount - await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs");
        var completedTwice = await _database.ScalarAsync<long>("SELECT count(*) FROM (SELECT job_id FROM {s}.job_history WHERE state = 3 GROUP BY job_id HAVING count(*) > 1) x");
        var reclaimed = await _database.ScalarAsync<long>("SELECT count(DISTINCT job_id) FROM {s}.fleet_starts WHERE attempt > 1");
        var resumed = await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.fleet_starts WHERE seen_step > 0");

        // A resumed attempt must start at or after the last checkpoint any earlier attempt confirmed saving.
        var resumedBehind = await _database.ScalarAsync<long>("""
            SELECT count(*) FROM {s}.fleet_starts s
            WHERE s.seen_step < coalesce((SELECT max(c.step) FROM {s}.fleet_checkpoints c WHERE c.job_id = s.job_id AND c.attempt < s.attempt), 0)
            """);

        // Stale writes: a checkpoint an attempt saw was written by an earlier fence of the same job; the completion
        // in history carries the job's final fence.
        var staleCheckpoints = await _database.ScalarAsync<long>("""
            SELECT count(*) FROM {s}.fleet_starts s
            WHERE s.seen_fence <> 0 AND (s.seen_fence >= s.fence OR NOT EXISTS (
                SELECT 1 FROM {s}.fleet_starts e WHERE e.job_id = s.job_id AND e.fence = s.seen_fence AND e.attempt < s.attempt))
            """);
        var staleCompletions = await _database.ScalarAsync<long>("""
            SELECT count(*) FROM {s}.job_history h JOIN {s}.jobs j ON j.id = h.job_id WHERE h.state >= 3 AND h.fence <> j.fence
            """);

        output.WriteLine($"fleet: {JobCount} jobs, {Workers} workers, {kills} kills, database restarted: {restarted}, {elapsed.TotalSeconds:F1} s");
        output.WriteLine($"terminal {terminal}, succeeded {succeeded}, lost {lost}, completed twice {completedTwice}");
        output.WriteLine($"jobs with more than one attempt {reclaimed}, attempts resumed from a checkpoint {resumed}, resumed behind the last checkpoint {resumedBehind}");
        output.WriteLine($"stale writes accepted: checkpoints {staleCheckpoints}, completions {staleCompletions}");
        var summary = $"[fleet] jobs {JobCount} kills {kills} restartedDb {restarted} terminal {terminal} succeeded {succeeded} lost {lost} completedTwice {completedTwice} resumed {resumed} resumedBehind {resumedBehind} staleAccepted {staleCheckpoints + staleCompletions} seconds {elapsed.TotalSeconds:F1}";
        if (Environment.GetEnvironmentVariable("JOBRUNNER_TEST_REPORT") is { Length: > 0 } report)
        {
            await File.AppendAllTextAsync(report, summary + Environment.NewLine);
        }

        Assert.True(restarted);
        Assert.True(kills >= 3, $"only {kills} kills");
        Assert.Equal(0, lost);
        Assert.Equal(JobCount, terminal);
        Assert.Equal(JobCount, succeeded);
        Assert.Equal(0, completedTwice);
        Assert.Equal(0, resumedBehind);
        Assert.Equal(0, staleCheckpoints);
        Assert.Equal(0, staleCompletions);
        Assert.True(resumed > 0, "no attempt resumed from a checkpoint: the kills never hit a checkpointing job");
    }

    private Process StartWorker(int index)
    {
        // This test runs from tests/<this>/bin/<configuration>/net10.0/; the worker is built next to it by the project reference.
        var output = Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory);
        var configuration = Path.GetFileName(Path.GetDirectoryName(output))!;
        var dll = Path.GetFullPath(Path.Combine(output, "..", "..", "..", "..", "JobRunner.Storage.Postgres.FleetWorker", "bin", configuration, "net10.0", "JobRunner.Storage.Postgres.FleetWorker.dll"));
        Assert.True(File.Exists(dll), $"The fleet worker was not built at {dll}.");
        var start = new ProcessStartInfo("dotnet", [dll, _database.ConnectionString, _database.Schema, "w" + index])
        {
            RedirectStandardOutput = false,
            RedirectStandardError = false,
        };
        return Process.Start(start)!;
    }
}

/// <summary>The fleet test's own collection, run after the parallel ones and with nothing beside it.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FleetCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Fleet: restarts the database";
}
