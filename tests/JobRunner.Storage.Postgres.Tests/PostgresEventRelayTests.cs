using JobRunner.Testing;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres.Tests;

/// <summary>
/// The relay reads a row once its transaction is below pg_snapshot_xmin, which any transaction on the server holds back
/// while it runs: these tests run alone (not beside other test classes), and where a row must appear they poll until it
/// does (<see cref="PollUntilAsync"/>); a transaction elsewhere can delay a row, never publish one early or twice.
/// </summary>
[Collection(RelayCollection.Name)]
public sealed class PostgresEventRelayTests : IAsyncLifetime
{
    private const string OtherHost = "another-host";
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

        await PollUntilAsync(relay, 2);

        Assert.True(await events.MoveNextAsync());
        Assert.Equal((job.Id, JobState.Running, (JobState?)JobState.Queued, 1), (events.Current.JobId, events.Current.State, events.Current.PreviousState, events.Current.Attempt));
        Assert.True(await events.MoveNextAsync());
        Assert.Equal((job.Id, JobState.Succeeded, (JobState?)JobState.Running, "default", "work"), (events.Current.JobId, events.Current.State, events.Current.PreviousState, events.Current.Tenant, events.Current.Workload));

        // Read once: later polls, however late, publish nothing again.
        _time.Advance(TimeSpan.FromMinutes(1));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        await events.DisposeAsync();
        Assert.NotEqual(before.Job.Id, job.Id);
    }

    [Fact]
    public async Task Each_row_is_published_once_across_many_polls()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));

        // Five rounds: ten new jobs each, and the previous round's ten leased; every round's rows, then a few empty polls.
        var expected = new List<(JobId, JobState)>();
        JobRecord[] previous = [];
        for (var round = 0; round < 5; round++)
        {
            _time.Advance(TimeSpan.FromMilliseconds(10));
            var jobs = Enumerable.Range(0, 10).Select(_ => Jobs.New(_time)).ToArray();
            await worker.InsertManyAsync(jobs, default);
            expected.AddRange(jobs.Select(j => (j.Id, JobState.Queued)));
            foreach (var job in previous)
            {
                Assert.NotNull(await worker.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default));
                expected.Add((job.Id, JobState.Running));
            }

            await PollUntilAsync(relay, jobs.Length + previous.Length);
            for (var poll = 0; poll < 3; poll++)
            {
                Assert.Equal(0, await relay.PollOnceAsync(default));
            }

            previous = jobs;
        }

        var published = await events.TakeAsync(expected.Count);
        Assert.Equal(expected.Order(), published.Select(e => (e.JobId, e.State)).Order());
    }

    [Fact]
    public async Task A_row_of_a_transaction_that_commits_after_a_later_one_is_published_once()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var (a, b, c) = (Jobs.New(_time), Jobs.New(_time), Jobs.New(_time));
        await worker.InsertManyAsync([a, b, c], default);
        await StartWatchingAsync(relay);
        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));

        _time.Advance(TimeSpan.FromMilliseconds(10));
        await using var early = await ConnectAsync();
        await using var late = await ConnectAsync();
        await WriteAsync(late, c.Id, JobState.Running);
        await using var open = await early.BeginTransactionAsync();
        await WriteAsync(early, a.Id, JobState.Running);
        await WriteAsync(late, b.Id, JobState.Running);

        // b committed, but after a's transaction took its id: it waits for that transaction, and c (before it) does not.
        await PollUntilAsync(relay, 1);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        await open.CommitAsync();
        await PollUntilAsync(relay, 2);
        Assert.Equal(0, await relay.PollOnceAsync(default));

        Assert.Equal(new[] { c.Id, a.Id, b.Id }, (await events.TakeAsync(3)).Select(e => e.JobId));
    }

    [Fact]
    public async Task A_jobs_transitions_keep_their_order_when_the_later_one_has_the_lower_transaction_id()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);
        await StartWatchingAsync(relay);
        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        // A completion batch takes its transaction id (at its first row lock), another transaction starts, a cancellation
        // writes the job's Running row and commits, then the batch writes the job's Succeeded row with the lowest id.
        await using var batch = await ConnectAsync();
        await using var other = await ConnectAsync();
        await using var cancellation = await ConnectAsync();
        await using var batchTransaction = await batch.BeginTransactionAsync();
        var batchId = await TakeTransactionIdAsync(batch);
        await using var otherTransaction = await other.BeginTransactionAsync();
        await TakeTransactionIdAsync(other);
        var cancellationId = await WriteAsync(cancellation, job.Id, JobState.Running);
        await WriteAsync(batch, job.Id, JobState.Succeeded);
        await batchTransaction.CommitAsync();
        Assert.True(batchId < cancellationId);

        // The Succeeded row is readable, the Running row not yet (the other transaction holds xmin below it): it waits.
        Assert.Equal(0, await relay.PollOnceAsync(default));
        await otherTransaction.CommitAsync();
        await PollUntilAsync(relay, 2);
        Assert.Equal(0, await relay.PollOnceAsync(default));

        var published = await events.TakeAsync(2);
        Assert.Equal(new[] { (JobState.Running, (JobState?)JobState.Queued), (JobState.Succeeded, JobState.Running) }, published.Select(e => (e.State, e.PreviousState)));
    }

    [Fact]
    public async Task More_rows_than_one_poll_reads_follow_at_the_next_polls_none_lost_or_repeated()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        var jobs = Enumerable.Range(0, PostgresEventRelay.MaxRows + 50).Select(_ => Jobs.New(_time)).ToArray();
        await worker.InsertManyAsync(jobs, default);

        var polls = await PollUntilAsync(relay, jobs.Length);
        Assert.All(polls, n => Assert.InRange(n, 0, PostgresEventRelay.MaxRows));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal(jobs.Select(j => j.Id).Order(), (await events.TakeAsync(jobs.Length)).Select(e => e.JobId).Order());
    }

    [Fact]
    public async Task One_transaction_with_more_rows_than_one_poll_reads_drains_in_id_order()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);
        await StartWatchingAsync(relay);
        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        // One transaction: all its rows become readable at once, and the cursor goes on by id inside it.
        const int Rows = PostgresEventRelay.MaxRows + 50;
        await using (var connection = await ConnectAsync())
        await using (var command = new NpgsqlCommand($"INSERT INTO \"{_database.Schema}\".job_history (job_id, at, state, attempt, fence, instance) SELECT @job, @at, 2, g, 1, @instance FROM generate_series(1, {Rows}) g", connection))
        {
            command.Parameters.AddWithValue("job", job.Id.Value);
            command.Parameters.AddWithValue("at", _time.GetUtcNow());
            command.Parameters.AddWithValue("instance", OtherHost);
            await command.ExecuteNonQueryAsync();
        }

        Assert.Equal(new[] { PostgresEventRelay.MaxRows }, (await PollUntilAsync(relay, PostgresEventRelay.MaxRows)).Where(n => n > 0));
        Assert.Equal(50, await relay.PollOnceAsync(default));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal(Enumerable.Range(1, Rows), (await events.TakeAsync(Rows)).Select(e => e.Attempt));
    }

    [Fact]
    public async Task Rows_written_before_watching_started_are_not_published_but_rows_committed_after_are()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var (old, pending, fresh) = (Jobs.New(_time), Jobs.New(_time), Jobs.New(_time));
        await worker.InsertAsync(pending, default);

        // Written before anyone watched: a transition in a transaction that commits only after watching started (the
        // watcher's own snapshot cannot hold it), then a job committed by a later transaction (above the cursor's start).
        await using var connection = await ConnectAsync();
        await using var transaction = await connection.BeginTransactionAsync();
        await WriteAsync(connection, pending.Id, JobState.Running);
        await worker.InsertAsync(old, default);
        _time.Advance(TimeSpan.FromMilliseconds(10));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        await using var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        await transaction.CommitAsync();
        await worker.InsertAsync(fresh, default);

        await PollUntilAsync(relay, 2);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal(new[] { (pending.Id, JobState.Running), (fresh.Id, JobState.Queued) }, (await events.TakeAsync(2)).Select(e => (e.JobId, e.State)));
    }

    [Fact]
    public async Task A_transition_stamped_before_the_last_unwatched_poll_but_committed_after_it_is_published()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);

        // The other host stamps the transition (its clock), then waits (a row lock, a retry) past this host's unwatched poll.
        var stamped = _time.GetUtcNow();
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));

        // A watcher subscribes (and would read the job Queued now); then the transition commits, a second older than the poll.
        await using var events = new Watcher(apiEvents);
        await using var connection = await ConnectAsync();
        await WriteAsync(connection, job.Id, JobState.Running, stamped);

        await PollUntilAsync(relay, 1);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal((job.Id, JobState.Running), (await events.TakeAsync(1)).Select(e => (e.JobId, e.State)).Single());
    }

    [Fact]
    public async Task A_watcher_who_comes_while_the_first_unwatched_poll_takes_its_snapshot_gets_nothing_twice()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        Assert.Equal(0, await relay.PollOnceAsync(default));

        // Someone watches for a while: ten jobs published.
        var first = new Watcher(apiEvents);
        _time.Advance(TimeSpan.FromMilliseconds(10));
        await worker.InsertManyAsync(Enumerable.Range(0, 10).Select(_ => Jobs.New(_time)).ToArray(), default);
        await PollUntilAsync(relay, 10);
        await first.DisposeAsync();

        // They leave; the next poll finds nobody, and while it takes its snapshot someone else starts watching.
        Watcher? second = null;
        relay.AfterSnapshot = () => second ??= new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        relay.AfterSnapshot = null;
        await using var watcher = second!;

        _time.Advance(TimeSpan.FromMilliseconds(10));
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);
        await PollUntilAsync(relay, 1);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal(job.Id, (await watcher.TakeAsync(1))[0].JobId);
    }

    [Fact]
    public async Task A_watcher_before_the_first_poll_gets_what_commits_from_then_on()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var old = Jobs.New(_time);
        await worker.InsertAsync(old, default);
        _time.Advance(PostgresEventRelay.StartLookback + TimeSpan.FromSeconds(1));

        // No poll has found nobody watching: the relay starts from the lookback, by time.
        await using var events = new Watcher(apiEvents);
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);
        await PollUntilAsync(relay, 1);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        Assert.Equal(job.Id, (await events.TakeAsync(1))[0].JobId);
    }

    [Fact]
    public async Task Nobody_watching_again_forgets_the_cursor_and_the_next_watcher_starts_from_then()
    {
        var (worker, relay, apiEvents) = TwoHosts();
        var events = new Watcher(apiEvents);
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));
        await worker.InsertAsync(Jobs.New(_time), default);
        await PollUntilAsync(relay, 1);
        await events.DisposeAsync();

        // Unwatched: rows written now are never published, not even when someone watches again.
        _time.Advance(TimeSpan.FromMilliseconds(10));
        await worker.InsertAsync(Jobs.New(_time), default);
        _time.Advance(TimeSpan.FromMilliseconds(10));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));
        await using var again = new Watcher(apiEvents);
        var job = Jobs.New(_time);
        await worker.InsertAsync(job, default);

        await PollUntilAsync(relay, 1);
        Assert.Equal(job.Id, (await again.TakeAsync(1))[0].JobId);
    }

    [Fact]
    public void Publishable_without_predecessors_after_the_rows_is_every_row()
    {
        List<PostgresEventRelay.Row> rows = [Row(10, 1), Row(10, 2, previous: (12, 3)), Row(12, 3, previous: (10, 1))];

        // The second row's predecessor is the third: both go out (by id).
        Assert.Equal(3, PostgresEventRelay.Publishable(rows, full: false));
    }

    [Fact]
    public void Publishable_stops_before_a_row_whose_predecessor_was_not_read()
    {
        List<PostgresEventRelay.Row> rows = [Row(10, 1), Row(10, 2, previous: (14, 3)), Row(12, 4)];

        Assert.Equal(1, PostgresEventRelay.Publishable(rows, full: false));
        Assert.Equal(1, PostgresEventRelay.Publishable(rows, full: true));
        Assert.Equal(0, PostgresEventRelay.Publishable([Row(10, 2, previous: (14, 3))], full: false));
    }

    [Fact]
    public void Publishable_of_a_full_read_that_would_wait_for_a_row_beyond_it_is_every_row()
    {
        List<PostgresEventRelay.Row> rows = [Row(10, 2, previous: (14, 3)), Row(12, 4)];

        Assert.Equal(2, PostgresEventRelay.Publishable(rows, full: true));
    }

    [Fact]
    public void Relay_without_history_is_refused_at_start_naming_the_fix()
    {
        var errors = new PostgresOptionsValidator().Validate(null, _database.Options(o => o.WriteHistory = false)).Failures;

        Assert.Contains(errors!, e => e.Contains("EventRelayInterval = null", StringComparison.Ordinal));
        Assert.True(new PostgresOptionsValidator().Validate(null, _database.Options(o => { o.WriteHistory = false; o.EventRelayInterval = null; })).Succeeded);
    }

    /// <summary>A worker host's store, and an API host's relay and event bus, on the same schema.</summary>
    private (PostgresJobStore Worker, PostgresEventRelay Relay, IJobEventBus ApiEvents) TwoHosts()
    {
        var (_, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, _, _, apiEvents) = _database.OpenStore(_time);
        return (worker, new PostgresEventRelay(apiDb, apiEvents), apiEvents);
    }

    /// <summary>A moment later a poll while nobody watches, and a moment later again: a watcher that subscribes now starts from that poll.</summary>
    private async Task StartWatchingAsync(PostgresEventRelay relay)
    {
        _time.Advance(TimeSpan.FromMilliseconds(10));
        Assert.Equal(0, await relay.PollOnceAsync(default));
        _time.Advance(TimeSpan.FromMilliseconds(10));
    }

    private static PostgresEventRelay.Row Row(ulong xactId, long id, (ulong XactId, long Id)? previous = null)
        => new(new(xactId, id), null, previous is { } p ? new(p.XactId, p.Id) : null);

    /// <summary>
    /// Polls until the relay has published <paramref name="expected"/> events in all, and fails if it publishes more or
    /// has not within 1,000 polls. Another transaction on the server (autovacuum's ANALYZE, a test elsewhere) can hold the
    /// rows back for a moment; polling again is what the relay does too.
    /// </summary>
    private static async Task<List<int>> PollUntilAsync(PostgresEventRelay relay, int expected)
    {
        var polls = new List<int>();
        for (var total = 0; total < expected && polls.Count < 1_000; total += polls[^1])
        {
            polls.Add(await relay.PollOnceAsync(default));
        }

        Assert.Equal(expected, polls.Sum());
        return polls;
    }

    private async Task<NpgsqlConnection> ConnectAsync()
    {
        var connection = new NpgsqlConnection(_database.ConnectionString);
        await connection.OpenAsync();
        return connection;
    }

    /// <summary>Writes a transition as another host does, on the connection's transaction if it has one; returns that transaction's id.</summary>
    private async Task<ulong> WriteAsync(NpgsqlConnection connection, JobId job, JobState state, DateTimeOffset? at = null)
    {
        await using var command = new NpgsqlCommand(
            $"INSERT INTO \"{_database.Schema}\".job_history (job_id, at, state, attempt, fence, instance) VALUES (@job, @at, @state, 1, 1, @instance) RETURNING xact_id",
            connection);
        command.Parameters.AddWithValue("job", job.Value);
        command.Parameters.AddWithValue("at", at ?? _time.GetUtcNow());
        command.Parameters.AddWithValue("state", (short)state);
        command.Parameters.AddWithValue("instance", OtherHost);
        return (ulong)(await command.ExecuteScalarAsync())!;
    }

    private static async Task<ulong> TakeTransactionIdAsync(NpgsqlConnection connection)
    {
        await using var command = new NpgsqlCommand("SELECT pg_current_xact_id()", connection);
        return (ulong)(await command.ExecuteScalarAsync())!;
    }

    /// <summary>Watches StateChanged from construction on (the bus subscribes at the first MoveNextAsync, started here).</summary>
    private sealed class Watcher : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stop = new();
        private readonly IAsyncEnumerator<JobEvent> _events;
        private Task<bool> _next;

        public Watcher(IJobEventBus bus)
        {
            _events = bus.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, _stop.Token).GetAsyncEnumerator();
            _next = _events.MoveNextAsync().AsTask();
        }

        /// <summary>Takes the next <paramref name="count"/> events (published already: the polls counted them).</summary>
        public async Task<List<JobEvent>> TakeAsync(int count)
        {
            var taken = new List<JobEvent>(count);
            while (taken.Count < count)
            {
                Assert.True(await _next.WaitAsync(TimeSpan.FromSeconds(30)));
                taken.Add(_events.Current);
                _next = _events.MoveNextAsync().AsTask();
            }

            return taken;
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            try
            {
                await _next;
            }
            catch (OperationCanceledException)
            {
            }

            await _events.DisposeAsync();
            _stop.Dispose();
        }
    }
}

/// <summary>The relay's tests run alone: transactions of tests beside them would hold back the rows they poll for.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RelayCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "Event relay: reads by pg_snapshot_xmin";
}
