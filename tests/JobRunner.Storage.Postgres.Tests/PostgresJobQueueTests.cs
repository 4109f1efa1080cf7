using JobRunner.Testing;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class PostgresJobQueueTests : IAsyncLifetime
{
    private static readonly TimeSpan Visibility = TimeSpan.FromSeconds(30);
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero));

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Dequeue_takes_the_highest_priority_then_the_oldest_and_hides_what_it_took()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        var low = await Insert(store, priority: 2);
        _time.Advance(TimeSpan.FromSeconds(1));
        var highOld = await Insert(store, priority: 9);
        _time.Advance(TimeSpan.FromSeconds(1));
        var highNew = await Insert(store, priority: 9);

        var buffer = new QueuedJob[2];
        var got = await queue.DequeueAsync(buffer, Visibility, default);

        Assert.Equal(2, got);
        Assert.Equal(new[] { highOld, highNew }.OrderBy(i => i), buffer.Select(b => b.Id).OrderBy(i => i));
        var rest = new QueuedJob[10];
        Assert.Equal(1, await queue.DequeueAsync(rest, Visibility, default));
        Assert.Equal(low, rest[0].Id);
        Assert.Equal(9, buffer[0].Priority);
        Assert.Equal("default", buffer[0].Tenant);
    }

    [Fact]
    public async Task Dequeue_carries_the_affinity_the_scheduler_matches()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        var job = Jobs.New(_time);
        await store.InsertAsync(job with { Request = job.Request with { Affinity = "gpu=true, zone=eu?" } }, default);
        await Insert(store);

        var buffer = new QueuedJob[2];
        Assert.Equal(2, await queue.DequeueAsync(buffer, Visibility, default));

        Assert.Equal("gpu=true, zone=eu?", buffer.Single(b => b.Id == job.Id).Affinity);
        Assert.Null(buffer.Single(b => b.Id != job.Id).Affinity);
    }

    [Fact]
    public async Task Returned_and_lapsed_jobs_become_visible_again()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        var a = await Insert(store);
        var b = await Insert(store);
        var buffer = new QueuedJob[10];
        Assert.Equal(2, await queue.DequeueAsync(buffer, Visibility, default));

        await queue.ReturnAsync([buffer[0]], default);
        var again = new QueuedJob[10];
        Assert.Equal(1, await queue.DequeueAsync(again, Visibility, default));
        Assert.Equal(buffer[0].Id, again[0].Id);

        // Extended jobs stay hidden past the first visibility; lapsed ones come back.
        await queue.ExtendAsync([again[0]], TimeSpan.FromMinutes(5), default);
        _time.Advance(Visibility + TimeSpan.FromSeconds(1));
        var lapsed = new QueuedJob[10];
        Assert.Equal(1, await queue.DequeueAsync(lapsed, Visibility, default));
        Assert.Equal(buffer[1].Id, lapsed[0].Id);
        Assert.Contains(lapsed[0].Id, new[] { a, b });
    }

    [Fact]
    public async Task A_scheduled_job_is_not_taken_before_it_is_due_and_the_waiting_dequeue_wakes_then()
    {
        var (_, store, queue, _) = _database.OpenStore(_time, o => o.PollInterval = TimeSpan.FromHours(1));
        var due = _time.GetUtcNow().AddSeconds(10);
        var job = await Insert(store, dueAt: due);

        var buffer = new QueuedJob[10];
        var waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync();
        Assert.False(waiting.IsCompleted);

        _time.Advance(TimeSpan.FromSeconds(10));
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(job, buffer[0].Id);
    }

    [Fact]
    public async Task An_enqueue_on_one_host_wakes_a_waiting_worker_on_another_by_notify()
    {
        var (_, storeA, queueA, _) = _database.OpenStore(_time);
        var (dbB, storeB, queueB, _) = _database.OpenStore(_time, o => o.PollInterval = TimeSpan.FromHours(1));
        var listener = new PostgresBackgroundService(dbB, storeB);
        await listener.StartAsync(default);
        await listener.Listening.Current.WaitAsync(TimeSpan.FromSeconds(30));

        var buffer = new QueuedJob[10];
        var waiting = queueB.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync();
        Assert.False(waiting.IsCompleted);

        var record = Jobs.New(_time);
        await storeA.InsertAsync(record, default);
        await queueA.EnqueueAsync(QueuedJob.For(record, _time.GetUtcNow()), default);

        // No clock advance: only the NOTIFY can wake it (the poll interval is an hour).
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(record.Id, buffer[0].Id);
        await listener.StopAsync(default);
    }

    private async Task WaitForTimerAsync()
    {
        // The dequeue found nothing and armed its wait timer on the fake clock.
        for (var i = 0; _time.TimerCount == 0; i++)
        {
            Assert.True(i < 3000, "The dequeue never started waiting.");
            await Task.Delay(TimeSpan.FromMilliseconds(1), TimeProvider.System);
        }
    }

    private async Task<JobId> Insert(PostgresJobStore store, int priority = 5, DateTimeOffset? dueAt = null)
        => (await store.InsertAsync(Jobs.New(_time, priority: priority, dueAt: dueAt), default)).Job.Id;
}
