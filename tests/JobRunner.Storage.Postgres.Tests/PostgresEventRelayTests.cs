using JobRunner.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class PostgresEventRelayTests : IAsyncLifetime
{
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero));

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    [Fact]
    public async Task Transitions_written_by_another_host_reach_this_hosts_watchers_once_and_its_own_are_not_repeated()
    {
        var (_, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, api, _, apiEvents) = _database.OpenStore(_time);
        var relay = new PostgresEventRelay(apiDb, apiEvents);

        // Nobody watches yet: nothing is read or published.
        var before = await api.InsertAsync(Jobs.New(_time), default);
        Assert.Equal(0, await relay.PollOnceAsync(default));

        var events = apiEvents.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, default).GetAsyncEnumerator();
        var first = events.MoveNextAsync();
        _time.Advance(TimeSpan.FromMilliseconds(10));
        var job = Jobs.New(_time);
        await api.InsertAsync(job, default);
        Assert.True(await first);
        Assert.Equal((job.Id, JobState.Queued), (events.Current.JobId, events.Current.State));

        _time.Advance(TimeSpan.FromMilliseconds(10));
        var leased = (await worker.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!;
        _time.Advance(TimeSpan.FromMilliseconds(10));
        await worker.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default);

        Assert.Equal(2, await relay.PollOnceAsync(default));
        Assert.Equal(0, await relay.PollOnceAsync(default));

        Assert.True(await events.MoveNextAsync());
        Assert.Equal((job.Id, JobState.Running, (JobState?)JobState.Queued, 1), (events.Current.JobId, events.Current.State, events.Current.PreviousState, events.Current.Attempt));
        Assert.True(await events.MoveNextAsync());
        Assert.Equal((job.Id, JobState.Succeeded, (JobState?)JobState.Running, "default", "work"), (events.Current.JobId, events.Current.State, events.Current.PreviousState, events.Current.Tenant, events.Current.Workload));

        // Rows leave the window: they are forgotten and never published again.
        _time.Advance(PostgresEventRelay.Window + TimeSpan.FromSeconds(1));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        await events.DisposeAsync();
        Assert.NotEqual(before.Job.Id, job.Id);
    }

    [Fact]
    public async Task More_rows_than_one_poll_publishes_follow_at_the_next_poll()
    {
        var (_, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, _, _, apiEvents) = _database.OpenStore(_time);
        var relay = new PostgresEventRelay(apiDb, apiEvents);
        using var stop = new CancellationTokenSource();
        var events = apiEvents.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, stop.Token).GetAsyncEnumerator();
        var first = events.MoveNextAsync();
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        await worker.InsertManyAsync([.. Enumerable.Range(0, PostgresEventRelay.MaxRows + 50).Select(_ => Jobs.New(_time))], default);

        Assert.Equal(PostgresEventRelay.MaxRows, await relay.PollOnceAsync(default));
        Assert.Equal(50, await relay.PollOnceAsync(default));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.True(await first);
        await stop.CancelAsync();
        await events.DisposeAsync();
    }

    [Fact]
    public void Relay_without_history_is_refused_at_start_naming_the_fix()
    {
        var errors = new PostgresOptionsValidator().Validate(null, _database.Options(o => o.WriteHistory = false)).Failures;

        Assert.Contains(errors!, e => e.Contains("EventRelayInterval = null", StringComparison.Ordinal));
        Assert.True(new PostgresOptionsValidator().Validate(null, _database.Options(o => { o.WriteHistory = false; o.EventRelayInterval = null; })).Succeeded);
    }
}
