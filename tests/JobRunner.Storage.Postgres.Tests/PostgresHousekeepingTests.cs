using JobRunner.Testing;
using Npgsql;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class PostgresHousekeepingTests : IAsyncLifetime
{
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero));

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Expired_history_and_finished_jobs_with_their_logs_go_a_bounded_committed_chunk_at_a_time_and_the_rest_stays()
    {
        var (db, store, _, _) = _database.OpenStore(_time, o => { o.HistoryRetention = TimeSpan.FromDays(2); o.FinishedJobRetention = TimeSpan.FromDays(3); });
        var logs = new PostgresLogStore(db);

        // Twelve jobs finished four days ago, each with a log line, one of them with 25 more; one still running since
        // then; three finished today.
        var old = await FinishAsync(store, logs, 12);
        var lease = new JobLease(old[5], "w", 1, 1, DateTimeOffset.MaxValue);
        await logs.AppendAsync(lease, Enumerable.Range(0, 25).Select(i => new LogLine(_time.GetUtcNow(), LogStream.Output, $"long {i}")).ToArray(), default);
        var running = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        await store.TryAcquireLeaseAsync(running.Id, "w", TimeSpan.FromDays(30), default);
        _time.Advance(TimeSpan.FromDays(4));
        var recent = await FinishAsync(store, logs, 3);
        var oldHistory = await _database.ScalarAsync<long>($"SELECT count(*) FROM {{s}}.job_history WHERE at < '{_time.GetUtcNow().AddDays(-2):O}'");

        // Each statement is committed when it returns (another connection sees the rows gone), and none deletes more
        // than ten history rows, ten log lines (a long log first loses its lines alone) or jobs with more than ten lines.
        var logLines = await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_logs");
        var keeper = new PostgresHousekeeper(db) { Chunk = 10 };
        var statements = new List<(string Kind, long Deleted, long HistoryLeft, long LogsLeft)>();
        keeper.AfterStatement = (kind, deleted) => statements.Add((
            kind,
            deleted,
            _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_history").GetAwaiter().GetResult(),
            _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_logs").GetAwaiter().GetResult()));
        var result = await keeper.RunOnceAsync(default);

        Assert.Equal((oldHistory, 12L), result);
        Assert.True(oldHistory > 20, $"{oldHistory} rows: more than two chunks");
        var history = statements.Where(s => s.Kind == "history").ToList();
        Assert.All(history, s => Assert.InRange(s.Deleted, 0, 10));
        Assert.True(history[0].HistoryLeft > history[2].HistoryLeft);
        Assert.Equal([10L, 10L, 6L], statements.Where(s => s.Kind == "logs").Select(s => s.Deleted));
        long[] logsLeft = [logLines, .. statements.Select(s => s.LogsLeft)];
        Assert.All(logsLeft.Zip(logsLeft.Skip(1)), pair => Assert.InRange(pair.First - pair.Second, 0, 10));
        Assert.Equal(3, logsLeft[^1]);
        foreach (var job in old)
        {
            Assert.Null(await store.GetAsync(job, default));
            Assert.Empty((await logs.ReadAsync(job, new LogQuery(), default)).Entries);
        }

        foreach (var job in recent)
        {
            Assert.Equal(JobState.Succeeded, (await store.GetAsync(job, default))!.State);
            Assert.Single((await logs.ReadAsync(job, new LogQuery(), default)).Entries);
        }

        Assert.Equal(JobState.Running, (await store.GetAsync(running.Id, default))!.State);
        Assert.Equal((0L, 0L), await keeper.RunOnceAsync(default));
    }

    [Fact]
    public async Task Housekeeping_runs_on_one_host_at_a_time_and_gives_the_lock_back()
    {
        var (db, _, _, _) = _database.OpenStore(_time);
        var keeper = new PostgresHousekeeper(db);
        Assert.NotNull(await keeper.RunOnceAsync(default));

        // Another host holds the lock: this one does nothing; then that host gives it back.
        await using (var other = new NpgsqlConnection(_database.ConnectionString + ";Pooling=false"))
        {
            await other.OpenAsync();
            await using var take = new NpgsqlCommand($"SELECT pg_try_advisory_lock(hashtext('jobrunner.housekeeping.{_database.Schema}'))", other);
            Assert.True((bool)(await take.ExecuteScalarAsync())!);
            Assert.Null(await keeper.RunOnceAsync(default));
            await using var release = new NpgsqlCommand($"SELECT pg_advisory_unlock(hashtext('jobrunner.housekeeping.{_database.Schema}'))", other);
            Assert.True((bool)(await release.ExecuteScalarAsync())!);
        }

        // Given back after each run: another host takes it at once.
        Assert.NotNull(await keeper.RunOnceAsync(default));
        await using var next = new NpgsqlConnection(_database.ConnectionString + ";Pooling=false");
        await next.OpenAsync();
        await using var again = new NpgsqlCommand($"SELECT pg_try_advisory_lock(hashtext('jobrunner.housekeeping.{_database.Schema}'))", next);
        Assert.True((bool)(await again.ExecuteScalarAsync())!);
    }

    private async Task<List<JobId>> FinishAsync(PostgresJobStore store, PostgresLogStore logs, int count)
    {
        var ids = new List<JobId>();
        for (var i = 0; i < count; i++)
        {
            var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
            var leased = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!;
            await logs.AppendAsync(leased.Lease, [new LogLine(_time.GetUtcNow(), LogStream.Output, "line")], default);
            await store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default);
            ids.Add(job.Id);
        }

        return ids;
    }
}
