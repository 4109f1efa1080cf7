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
    public async Task Expired_history_and_finished_jobs_with_their_logs_go_a_committed_chunk_at_a_time_and_the_rest_stays()
    {
        var (db, store, _, _) = _database.OpenStore(_time, o => { o.HistoryRetention = TimeSpan.FromDays(2); o.FinishedJobRetention = TimeSpan.FromDays(3); });
        var logs = new PostgresLogStore(db);

        // Twelve jobs finished four days ago, each with a log line; one still running since then; three finished today.
        var old = await FinishAsync(store, logs, 12);
        var running = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        await store.TryAcquireLeaseAsync(running.Id, "w", TimeSpan.FromDays(30), default);
        _time.Advance(TimeSpan.FromDays(4));
        var recent = await FinishAsync(store, logs, 3);
        var oldHistory = await _database.ScalarAsync<long>($"SELECT count(*) FROM {{s}}.job_history WHERE at < '{_time.GetUtcNow().AddDays(-2):O}'");

        // Each chunk is committed when it returns: another connection sees the rows gone.
        var service = new PostgresBackgroundService(db, store) { HousekeepingChunk = 10 };
        var chunks = new List<(long Deleted, long HistoryLeft)>();
        service.AfterHousekeepingChunk = deleted => chunks.Add((deleted, _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_history").GetAwaiter().GetResult()));
        var result = await service.HousekeepOnceAsync(default);

        Assert.Equal((oldHistory, 12L), result);
        Assert.True(oldHistory > 20, $"{oldHistory} rows: more than two chunks");
        Assert.All(chunks, c => Assert.InRange(c.Deleted, 0, 10));
        Assert.Equal(chunks.Select(c => c.HistoryLeft).Take(3), chunks.Select(c => c.HistoryLeft).Take(3).OrderDescending());
        Assert.True(chunks[0].HistoryLeft > chunks[2].HistoryLeft);
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
        Assert.Equal((0L, 0L), await service.HousekeepOnceAsync(default));
    }

    [Fact]
    public async Task Housekeeping_runs_on_one_host_at_a_time_and_gives_the_lock_back()
    {
        var (db, store, _, _) = _database.OpenStore(_time);
        var service = new PostgresBackgroundService(db, store);
        Assert.NotNull(await service.HousekeepOnceAsync(default));

        // Another host holds the lock: this one does nothing; then that host gives it back.
        await using (var other = new NpgsqlConnection(_database.ConnectionString + ";Pooling=false"))
        {
            await other.OpenAsync();
            await using var take = new NpgsqlCommand($"SELECT pg_try_advisory_lock(hashtext('jobrunner.housekeeping.{_database.Schema}'))", other);
            Assert.True((bool)(await take.ExecuteScalarAsync())!);
            Assert.Null(await service.HousekeepOnceAsync(default));
            await using var release = new NpgsqlCommand($"SELECT pg_advisory_unlock(hashtext('jobrunner.housekeeping.{_database.Schema}'))", other);
            Assert.True((bool)(await release.ExecuteScalarAsync())!);
        }

        // Given back after each run: another host takes it at once.
        Assert.NotNull(await service.HousekeepOnceAsync(default));
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
