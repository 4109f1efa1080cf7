using JobRunner.Testing;
using Npgsql;

namespace JobRunner.Storage.Postgres.Tests;

public sealed class PostgresJobStoreTests : IAsyncLifetime
{
    private readonly PostgresTestDatabase _database = new();
    private readonly FakeTimeProvider _time = new(new DateTimeOffset(2026, 11, 22, 10, 0, 0, TimeSpan.Zero));

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync() => await _database.DisposeAsync();

    /// <summary>Starts a host's background service (its LISTEN connection) and waits until it listens.</summary>
    private static async Task<PostgresBackgroundService> ListeningAsync(PostgresDatabase db, PostgresJobStore store)
    {
        var listener = new PostgresBackgroundService(db, store);
        await listener.StartAsync(default);
        await listener.Listening.Current.WaitAsync(TimeSpan.FromSeconds(30));
        return listener;
    }

    [Fact]
    public async Task Cancelling_a_waiting_job_tells_this_process_as_a_cancellation_with_state_cancelled()
    {
        var (_, store, _, events) = _database.OpenStore(_time);
        var queued = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        using var stop = new CancellationTokenSource();
        var heard = events.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();

        await store.RequestCancellationAsync(queued.Id, "not needed", default);

        // The worker drops a delivery it holds for such an event (a running job's request says Running).
        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        var request = heard.Current;
        await stop.CancelAsync();
        await heard.DisposeAsync();
        Assert.Equal((queued.Id, JobState.Cancelled, JobState.Queued, "not needed"), (request.JobId, request.State, request.PreviousState!.Value, request.Message));
    }

    [Fact]
    public async Task Insert_then_get_round_trips_every_field()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = JobWithEveryField();

        var result = await store.InsertAsync(job, default);
        var read = await store.GetAsync(job.Id, default);

        Assert.False(result.Attached);
        Assert.NotNull(read);
        AssertStoredAsSubmitted(job, read);
        Assert.Empty(read.Attempts);
        Assert.Null(read.Checkpoint);
        Assert.Null(read.Progress);
    }

    [Fact]
    public async Task A_live_dedupe_key_attaches_and_a_finished_one_frees_the_key()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var first = await store.InsertAsync(Jobs.New(_time, dedupe: "nightly"), default);
        var second = await store.InsertAsync(Jobs.New(_time, dedupe: "nightly"), default);
        var otherTenant = await store.InsertAsync(Jobs.New(_time, dedupe: "nightly", tenant: "t2"), default);

        Assert.True(second.Attached);
        Assert.Equal(first.Job.Id, second.Job.Id);
        Assert.False(otherTenant.Attached);

        await store.RequestCancellationAsync(first.Job.Id, "done", default);
        var third = await store.InsertAsync(Jobs.New(_time, dedupe: "nightly"), default);
        Assert.False(third.Attached);
        Assert.NotEqual(first.Job.Id, third.Job.Id);
    }

    [Fact]
    public async Task Within_one_batch_the_first_submit_of_a_dedupe_key_holds_it_whatever_the_ids()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var (first, second) = (Jobs.New(_time, dedupe: "k"), Jobs.New(_time, dedupe: "k"));
        if (first.Id.CompareTo(second.Id) < 0)
        {
            (first, second) = (second, first);
        }

        // The first submitted has the larger id: rows are ordered by key, and within a key by submission.
        var submitted = await store.InsertManyAsync([first, second], default);

        Assert.False(submitted[0].Attached);
        Assert.True(submitted[1].Attached);
        Assert.Equal(first.Id, submitted[1].Job.Id);
    }

    [Fact]
    public async Task A_submit_whose_dedupe_holder_finishes_right_after_the_conflict_is_inserted_and_returned()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var holder = (await store.InsertAsync(Jobs.New(_time, dedupe: "nightly"), default)).Job;

        // The batch's insert finds the key held; before it looks the holder up, the holder is cancelled.
        store.AfterInsertStatement = () =>
        {
            store.AfterInsertStatement = null;
            store.RequestCancellationAsync(holder.Id, "done", default).AsTask().GetAwaiter().GetResult();
        };
        var submitted = await store.InsertManyAsync([Jobs.New(_time), Jobs.New(_time, dedupe: "nightly")], default);

        Assert.False(submitted[1].Attached);
        Assert.NotEqual(holder.Id, submitted[1].Job.Id);
        Assert.Equal(JobState.Queued, (await store.GetAsync(submitted[1].Job.Id, default))!.State);
        Assert.Equal(JobState.Queued, (await store.GetAsync(submitted[0].Job.Id, default))!.State);
    }

    [Fact]
    public async Task A_batch_sharing_dedupe_keys_with_another_transaction_waits_for_it_instead_of_deadlocking()
    {
        // No retries: a deadlock fails the batch or the other writer.
        var (_, store, _, _) = _database.OpenStore(_time, o => o.MaxRetries = 0);
        var (k1, k2) = (Jobs.New(_time, dedupe: "k1"), Jobs.New(_time, dedupe: "k2"));
        await store.InsertAsync(Jobs.New(_time), default);

        // Another writer holds k1, uncommitted.
        await using var other = new NpgsqlConnection(_database.ConnectionString + ";Pooling=false");
        await other.OpenAsync();
        await using var transaction = await other.BeginTransactionAsync();
        await InsertKeyAsync(other, "k1");

        // The batch, given k2 before k1, waits on k1 (and must not hold k2 meanwhile); then the other writer takes k2.
        var batch = store.InsertManyAsync([k2, k1], default).AsTask();
        await _database.WaitForLockWaitAsync("The batch never waited for the other writer.");
        await InsertKeyAsync(other, "k2");
        await transaction.CommitAsync();

        var submitted = await batch.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.True(submitted[0].Attached);
        Assert.True(submitted[1].Attached);

        async Task InsertKeyAsync(NpgsqlConnection connection, string key)
        {
            await using var command = new NpgsqlCommand(
                $"INSERT INTO \"{_database.Schema}\".jobs (id, tenant, workload, priority, dedupe_key, input, state, ready_at, enqueued_at, created_at, updated_at) VALUES (gen_random_uuid(), 'default', 'work', 5, @key, ''::bytea, 0, now(), now(), now(), now())",
                connection);
            command.Parameters.AddWithValue("key", key);
            await command.ExecuteNonQueryAsync();
        }
    }

    [Fact]
    public async Task Concurrent_inserts_are_batched_and_none_is_lost()
    {
        var (_, store, _, _) = _database.OpenStore(_time, o => o.MaxBatchSize = 50);
        var jobs = Enumerable.Range(0, 400).Select(_ => Jobs.New(_time)).ToArray();

        var results = await Task.WhenAll(jobs.Select(j => store.InsertAsync(j, default).AsTask()));
        var many = await store.InsertManyAsync([.. Enumerable.Range(0, 300).Select(_ => Jobs.New(_time))], default);

        Assert.All(results, r => Assert.False(r.Attached));
        Assert.Equal(300, many.Count);
        Assert.Equal(700L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs"));
    }

    [Fact]
    public async Task A_bulk_insert_round_trips_every_field_and_a_retried_batch_duplicates_nothing()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var first = JobWithEveryField();
        var batch = new List<JobRecord> { first };
        batch.AddRange(Enumerable.Range(0, 39).Select(_ => Jobs.New(_time)));

        var results = await store.InsertManyAsync(batch, default);

        Assert.All(results, r => Assert.False(r.Attached));
        AssertStoredAsSubmitted(first, (await store.GetAsync(first.Id, default))!);
        Assert.Equal(40L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_history WHERE state = 0 AND attempt = 0 AND fence = 0"));

        // The same batch again (a retry after a lost commit reply) plus new jobs: only the new ones are added.
        var retry = new List<JobRecord>(batch);
        retry.AddRange(Enumerable.Range(0, 10).Select(_ => Jobs.New(_time)));
        var again = await store.InsertManyAsync(retry, default);

        Assert.Equal(retry.Select(j => j.Id), again.Select(r => r.Job.Id));
        Assert.All(again, r => Assert.False(r.Attached));
        Assert.Equal(50L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs"));
        Assert.Equal(50L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.job_history"));
    }

    [Fact]
    public async Task A_lease_grants_a_higher_fence_and_a_stale_one_changes_nothing()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var first = await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default);
        Assert.NotNull(first);
        Assert.Null(await store.TryAcquireLeaseAsync(job.Id, "w2", TimeSpan.FromSeconds(30), default));
        await store.SaveCheckpointAsync(first.Lease, "cp1"u8.ToArray(), default);

        // The lease expires; the job is taken back and leased again by another worker.
        _time.Advance(TimeSpan.FromSeconds(31));
        var reclaimed = await store.ReclaimExpiredLeasesAsync(default);
        Assert.Equal(job.Id, Assert.Single(reclaimed).Id);
        var second = await store.TryAcquireLeaseAsync(job.Id, "w2", TimeSpan.FromSeconds(30), default);
        Assert.NotNull(second);
        Assert.True(second.Lease.FenceToken > first.Lease.FenceToken);
        Assert.Equal(2, second.Lease.Attempt);
        Assert.Equal("cp1"u8.ToArray(), second.Checkpoint!.Value.ToArray());

        // The first worker comes back: every write it tries is rejected and the row is untouched.
        await Assert.ThrowsAsync<StaleFenceTokenException>(async () => await store.SaveCheckpointAsync(first.Lease, "stale"u8.ToArray(), default));
        await Assert.ThrowsAsync<StaleFenceTokenException>(async () => await store.ReportProgressAsync(first.Lease, new JobProgress(0.9, "stale"), default));
        await Assert.ThrowsAsync<StaleFenceTokenException>(async () => await store.CompleteAttemptAsync(first.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default));
        Assert.Equal((await store.RenewLeasesAsync([first.Lease], TimeSpan.FromSeconds(30), default)).Single(), job.Id);

        var now = await store.GetAsync(job.Id, default);
        Assert.Equal(JobState.Running, now!.State);
        Assert.Equal(second.Lease.FenceToken, now.FenceToken);
        Assert.Equal("cp1"u8.ToArray(), now.Checkpoint!.Value.ToArray());
        Assert.Null(now.Progress);
        Assert.Equal(AttemptOutcome.LeaseExpired, now.Attempts[0].Outcome);
        Assert.Null(now.Attempts[1].Outcome);
    }

    [Fact]
    public async Task Completion_records_the_attempt_and_the_next_state()
    {
        var (_, store, _, events) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        await store.ReportProgressAsync(lease, new JobProgress(0.5, "half"), default);
        _time.Advance(TimeSpan.FromSeconds(2));
        var retry = _time.GetUtcNow().AddSeconds(10);

        Assert.Equal(JobState.Scheduled, await store.CompleteAttemptAsync(lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = retry, Error = "boom", ErrorType = "X", ExitCode = 3 }, default));

        var scheduled = (await store.GetAsync(job.Id, default))!;
        Assert.Equal(JobState.Scheduled, scheduled.State);
        Assert.Equal(retry, scheduled.DueAt);
        Assert.Equal("boom", scheduled.LastError);
        Assert.Equal(new JobProgress(0.5, "half"), scheduled.Progress);
        var attempt = Assert.Single(scheduled.Attempts);
        Assert.Equal((AttemptOutcome.Failed, "boom", "X", 3, "w1"), (attempt.Outcome!.Value, attempt.Error!, attempt.ErrorType!, attempt.ExitCode!.Value, attempt.WorkerId));
        Assert.Equal(_time.GetUtcNow(), attempt.EndedAt);

        // Not due yet: no lease. Due: leased again, and the events say so.
        Assert.Null(await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default));
        _time.Advance(TimeSpan.FromSeconds(10));
        using var stop = new CancellationTokenSource();
        var heard = events.SubscribeAsync(new JobEventFilter { JobId = job.Id, Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();
        var again = await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default);
        Assert.NotNull(again);
        Assert.Equal(1, again.FailedAttempts);
        _time.Advance(TimeSpan.FromSeconds(1));
        Assert.Equal(JobState.Succeeded, await store.CompleteAttemptAsync(again.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default));
        var done = (await store.GetAsync(job.Id, default))!;
        Assert.Equal(2, done.Attempts.Count);
        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        var leasedEvent = heard.Current;
        Assert.True(await heard.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        var completedEvent = heard.Current;
        await stop.CancelAsync();
        await heard.DisposeAsync();
        Assert.Equal((JobState.Scheduled, JobState.Running, 2), (leasedEvent.PreviousState!.Value, leasedEvent.State, leasedEvent.Attempt));
        Assert.Equal((JobState.Running, JobState.Succeeded, 2, done.UpdatedAt, job.Request.Tenant, job.Request.Workload), (completedEvent.PreviousState!.Value, completedEvent.State, completedEvent.Attempt, completedEvent.Timestamp, completedEvent.Tenant, completedEvent.Workload));

        // History holds every transition: Queued, Running, Scheduled, Running, Succeeded.
        Assert.Equal("0,2,1,2,3", await _database.ScalarAsync<string>($"SELECT string_agg(state::text, ',' ORDER BY id) FROM {{s}}.job_history WHERE job_id = '{job.Id}'"));
    }

    [Theory]
    [InlineData(true, JobState.Succeeded, false)]
    [InlineData(true, JobState.Scheduled, false)]
    [InlineData(true, JobState.Queued, true)]
    [InlineData(false, JobState.Succeeded, true)]
    [InlineData(false, JobState.Scheduled, false)]
    [InlineData(false, JobState.Queued, true)]
    public async Task Completion_returns_the_state_as_stored_whether_or_not_the_store_granted_the_lease(bool sameStore, JobState next, bool cancel)
    {
        var (_, granting, _, _) = _database.OpenStore(_time);
        var (_, other, _, _) = _database.OpenStore(_time);
        var completing = sameStore ? granting : other;
        var job = Jobs.New(_time, retry: RetryPolicy.Fixed(TimeSpan.FromSeconds(3), 5));
        job = job with { Request = job.Request with { ConcurrencyKey = "k", Affinity = "gpu=true" } };
        await granting.InsertAsync(job, default);
        var first = (await granting.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        await granting.CompleteAttemptAsync(first, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Queued, Error = "first" }, default);
        var lease = (await granting.TryAcquireLeaseAsync(job.Id, "w2", TimeSpan.FromSeconds(30), default))!.Lease;
        // Written during the attempt by the worker, and by a client on another host.
        await completing.SaveCheckpointAsync(lease, "cp"u8.ToArray(), default);
        await completing.ReportProgressAsync(lease, new JobProgress(null, "almost"), default);
        if (cancel)
        {
            await other.RequestCancellationAsync(job.Id, "later", default);
        }

        _time.Advance(TimeSpan.FromMilliseconds(1234.5678));

        var completed = await completing.CompleteAttemptAsync(lease, new AttemptCompletion
        {
            Outcome = AttemptOutcome.Failed,
            NextState = next,
            DueAt = next == JobState.Scheduled ? _time.GetUtcNow().AddSeconds(3) : null,
            Error = "second",
            ErrorType = "E",
            ExitCode = 7,
        }, default);

        var stored = (await other.GetAsync(job.Id, default))!;
        Assert.Equal(cancel && next == JobState.Queued ? JobState.Cancelled : next, completed);
        Assert.Equal(stored.State, completed);
        Assert.Equal(_time.GetUtcNow().ToUnixTimeMilliseconds(), stored.UpdatedAt.ToUnixTimeMilliseconds());
        Assert.Equal("cp"u8.ToArray(), stored.Checkpoint!.Value.ToArray());
        Assert.Equal(new JobProgress(null, "almost"), stored.Progress);
        Assert.Equal(2, stored.Attempts.Count);
        var ended = stored.Attempts[1];
        Assert.Equal((AttemptOutcome.Failed, "second", "E", 7, "w2"), (ended.Outcome!.Value, ended.Error!, ended.ErrorType!, ended.ExitCode!.Value, ended.WorkerId));
        Assert.Equal("second", stored.LastError);
    }

    [Fact]
    public async Task A_running_attempts_progress_and_checkpoints_reach_watchers_on_another_host()
    {
        var (_, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, apiStore, _, apiEvents) = _database.OpenStore(_time);
        var listener = await ListeningAsync(apiDb, apiStore);
        using var stop = new CancellationTokenSource();
        var heard = apiEvents.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Progress, JobEventKind.Checkpointed } }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();

        var job = (await worker.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await worker.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        await worker.ReportProgressAsync(lease, new JobProgress(0.5, "half"), default);
        await worker.SaveCheckpointAsync(lease, "cp"u8.ToArray(), default);

        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        var progress = heard.Current;
        Assert.True(await heard.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        var checkpoint = heard.Current;
        Assert.Equal(
            (JobEventKind.Progress, job.Id, 1, job.Request.Tenant, job.Request.Workload, (JobProgress?)new JobProgress(0.5, "half"), "half", JobState.Running),
            (progress.Kind, progress.JobId, progress.Attempt, progress.Tenant, progress.Workload, progress.Progress, progress.Message, progress.State));
        Assert.Equal((JobEventKind.Checkpointed, job.Id, 1, (JobProgress?)null), (checkpoint.Kind, checkpoint.JobId, checkpoint.Attempt, checkpoint.Progress));
        Assert.Equal(_time.GetUtcNow().ToUnixTimeMilliseconds(), progress.Timestamp.ToUnixTimeMilliseconds());
        await stop.CancelAsync();
        await listener.StopAsync(default);
        await heard.DisposeAsync();
    }

    [Fact]
    public async Task A_long_progress_message_in_a_non_latin_script_reaches_another_host()
    {
        var (_, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, apiStore, _, apiEvents) = _database.OpenStore(_time);
        var listener = await ListeningAsync(apiDb, apiStore);
        using var stop = new CancellationTokenSource();
        var heard = apiEvents.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Progress } }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();

        // 2,000 characters of three UTF-8 bytes each: 6,000 bytes as written, 12,000 with every character escaped.
        var message = new string('漢', 2000);
        var job = (await worker.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await worker.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        await worker.ReportProgressAsync(lease, new JobProgress(0.5, message), default);

        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(message, heard.Current.Message);
        await stop.CancelAsync();
        await listener.StopAsync(default);
        await heard.DisposeAsync();
    }

    [Fact]
    public async Task A_failed_or_cancelled_job_is_queued_again_by_request_with_its_attempts_and_dedupe_key()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time, dedupe: "k"), default)).Job;
        var lease = (await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        await store.CompleteAttemptAsync(lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "boom" }, default);

        // Not while another live job holds the key: nothing changes.
        var holder = (await store.InsertAsync(Jobs.New(_time, dedupe: "k"), default)).Job;
        var taken = await Assert.ThrowsAsync<JobStateException>(async () => await store.RequeueAsync(job.Id, default));
        Assert.Contains(holder.Id.ToString(), taken.Message, StringComparison.Ordinal);
        Assert.Equal(JobState.Failed, (await store.GetAsync(job.Id, default))!.State);
        await store.RequestCancellationAsync(holder.Id, null, default);

        _time.Advance(TimeSpan.FromSeconds(5));
        var requeued = await store.RequeueAsync(job.Id, default);

        Assert.Equal((JobState.Queued, 1, "boom"), (requeued.State, requeued.Attempts.Count, requeued.LastError));
        Assert.Equal(_time.GetUtcNow().ToUnixTimeMilliseconds(), requeued.UpdatedAt.ToUnixTimeMilliseconds());
        Assert.Equal("0,2,4,0", await _database.ScalarAsync<string>($"SELECT string_agg(state::text, ',' ORDER BY id) FROM {{s}}.job_history WHERE job_id = '{job.Id}'"));

        // The same request again at the same instant (as when a transient error re-runs a statement whose commit's reply was
        // lost) finds its own write and returns the job; a later one is refused.
        Assert.Equal(JobState.Queued, (await store.RequeueAsync(job.Id, default)).State);
        _time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.Equal(JobState.Queued, (await Assert.ThrowsAsync<JobStateException>(async () => await store.RequeueAsync(job.Id, default))).State);
        Assert.True((await store.InsertAsync(Jobs.New(_time, dedupe: "k"), default)).Attached);
        var again = (await store.TryAcquireLeaseAsync(job.Id, "w2", TimeSpan.FromSeconds(30), default))!;
        Assert.Equal((2, 1), (again.Lease.Attempt, again.FailedAttempts));

        var running = await Assert.ThrowsAsync<JobStateException>(async () => await store.RequeueAsync(job.Id, default));
        Assert.Equal(JobState.Running, running.State);
        await Assert.ThrowsAsync<JobNotFoundException>(async () => await store.RequeueAsync(JobId.New(_time), default));
        await store.RequestCancellationAsync(job.Id, "stop", default);
        await store.CompleteAttemptAsync(again.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Cancelled, NextState = JobState.Cancelled }, default);
        var cleared = await store.RequeueAsync(job.Id, default);
        Assert.Equal((JobState.Queued, false, (string?)null), (cleared.State, cleared.CancelRequested, cleared.CancelReason));

        // A job cancelled before its not-before time is scheduled for it again.
        var due = Jobs.New(_time, dueAt: _time.GetUtcNow().AddHours(1));
        var later = (await store.InsertAsync(due with { Request = due.Request with { NotBefore = due.DueAt } }, default)).Job;
        await store.RequestCancellationAsync(later.Id, null, default);
        var scheduled = await store.RequeueAsync(later.Id, default);
        Assert.Equal((JobState.Scheduled, _time.GetUtcNow().AddHours(1).ToUnixTimeMilliseconds()), (scheduled.State, scheduled.DueAt!.Value.ToUnixTimeMilliseconds()));
        Assert.Null(await store.TryAcquireLeaseAsync(later.Id, "w3", TimeSpan.FromSeconds(30), default));
    }

    [Fact]
    public async Task Log_lines_appended_on_one_host_reach_log_watchers_on_another_host()
    {
        var (workerDb, worker, _, _) = _database.OpenStore(_time);
        var (apiDb, apiStore, _, apiEvents) = _database.OpenStore(_time);
        var listener = await ListeningAsync(apiDb, apiStore);
        using var stop = new CancellationTokenSource();
        var heard = apiEvents.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Log } }, stop.Token).GetAsyncEnumerator();
        var first = heard.MoveNextAsync().AsTask();

        var job = (await worker.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await worker.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        var logs = new PostgresLogStore(workerDb);
        await logs.AppendAsync(lease, [new LogLine(_time.GetUtcNow(), LogStream.Output, "one"), new LogLine(_time.GetUtcNow(), LogStream.Error, "two")], default);
        _time.Advance(TimeSpan.FromSeconds(1));
        await logs.AppendAsync(lease, [new LogLine(_time.GetUtcNow(), LogStream.Output, "three")], default);

        var lines = new List<JobEvent>();
        Assert.True(await first.WaitAsync(TimeSpan.FromSeconds(30)));
        lines.Add(heard.Current);
        while (lines.Count < 3)
        {
            Assert.True(await heard.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
            lines.Add(heard.Current);
        }

        Assert.All(lines, e => Assert.Equal((JobEventKind.Log, job.Id, 1, job.Request.Tenant, job.Request.Workload), (e.Kind, e.JobId, e.Attempt, e.Tenant, e.Workload)));
        Assert.Equal(["one", "two", "three"], lines.Select(e => e.Message));
        Assert.Equal([0L, 1L, 2L], lines.Select(e => e.Log!.Offset));
        Assert.Equal(LogStream.Error, lines[1].Log!.Stream);
        Assert.Equal(_time.GetUtcNow().ToUnixTimeMilliseconds(), lines[2].Timestamp.ToUnixTimeMilliseconds());
        await stop.CancelAsync();
        await listener.StopAsync(default);
        await heard.DisposeAsync();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_log_append_notifies_other_hosts_only_with_LogEventsAcrossHosts(bool across)
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default))!.Lease;
        var db = _database.Open(_time, o => o.LogEventsAcrossHosts = across);
        await using var listen = new NpgsqlConnection(_database.ConnectionString);
        await listen.OpenAsync();
        var heard = new List<string>();
        listen.Notification += (_, e) => heard.Add(e.Payload);
        await using (var command = new NpgsqlCommand($"LISTEN \"{db.AttemptEventsChannel}\"", listen))
        {
            await command.ExecuteNonQueryAsync();
        }

        var entries = await new PostgresLogStore(db).AppendAsync(lease, [new LogLine(_time.GetUtcNow(), LogStream.Output, "a"), new LogLine(_time.GetUtcNow(), LogStream.Output, "b")], default);
        Assert.Equal([0L, 1L], entries.Select(e => e.Offset));

        if (across)
        {
            // Sent after the append, in a transaction of its own.
            while (heard.Count == 0)
            {
                Assert.True(await listen.WaitAsync(TimeSpan.FromSeconds(30)));
            }

            using var payload = System.Text.Json.JsonDocument.Parse(Assert.Single(heard));
            var root = payload.RootElement;
            Assert.Equal(
                ((int)JobEventKind.Log, job.Id.Value, 1, 0L, 2L, db.InstanceId, job.Request.Tenant, job.Request.Workload),
                (root.GetProperty("k").GetInt32(), root.GetProperty("j").GetGuid(), root.GetProperty("a").GetInt32(), root.GetProperty("o").GetInt64(),
                 root.GetProperty("c").GetInt64(), root.GetProperty("i").GetString(), root.GetProperty("t").GetString(), root.GetProperty("w").GetString()));
            return;
        }

        // Nothing was queued for sending: a marker sent now is the first and only notification.
        await using (var other = new NpgsqlConnection(_database.ConnectionString))
        {
            await other.OpenAsync();
            await using var marker = new NpgsqlCommand($"SELECT pg_notify('{db.AttemptEventsChannel}', 'marker')", other);
            await marker.ExecuteNonQueryAsync();
        }

        while (!heard.Contains("marker"))
        {
            Assert.True(await listen.WaitAsync(TimeSpan.FromSeconds(30)));
        }

        Assert.Equal(["marker"], heard);
    }

    [Fact]
    public async Task Cancelling_a_queued_job_ends_it_and_a_running_one_tells_its_worker_on_another_host()
    {
        var (_, storeA, _, eventsA) = _database.OpenStore(_time);
        var (dbB, storeB, _, eventsB) = _database.OpenStore(_time);
        var listenerB = await ListeningAsync(dbB, storeB);
        using var stop = new CancellationTokenSource();
        var heard = eventsB.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } }, stop.Token).GetAsyncEnumerator();
        var next = heard.MoveNextAsync().AsTask();

        var changes = eventsA.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, stop.Token).GetAsyncEnumerator();
        var inserted = changes.MoveNextAsync().AsTask();
        var queued = (await storeA.InsertAsync(Jobs.New(_time), default)).Job;
        var cancelled = await storeA.RequestCancellationAsync(queued.Id, "no longer needed", default);
        Assert.Equal(JobState.Cancelled, cancelled.State);
        Assert.True(await inserted.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.True(await changes.MoveNextAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal((JobState.Cancelled, (JobState?)JobState.Queued, "no longer needed"), (changes.Current.State, changes.Current.PreviousState, changes.Current.Message));
        await changes.DisposeAsync();
        Assert.Null(await storeA.TryAcquireLeaseAsync(queued.Id, "w", TimeSpan.FromSeconds(30), default));

        var running = (await storeA.InsertAsync(Jobs.New(_time), default)).Job;
        var lease = (await storeB.TryAcquireLeaseAsync(running.Id, "wB", TimeSpan.FromSeconds(30), default))!.Lease;
        var marked = await storeA.RequestCancellationAsync(running.Id, "stop it", default);

        Assert.Equal(JobState.Running, marked.State);
        Assert.True(marked.CancelRequested);
        Assert.True(await next.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal((running.Id, "stop it"), (heard.Current.JobId, heard.Current.Message));

        // A cancellation requested during the attempt wins over a retry.
        Assert.Equal(JobState.Cancelled, await storeB.CompleteAttemptAsync(lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Queued }, default));
        await Assert.ThrowsAsync<JobNotFoundException>(async () => await storeA.RequestCancellationAsync(JobId.New(_time), null, default));
        await stop.CancelAsync();
        await listenerB.StopAsync(default);
        await heard.DisposeAsync();
    }

    [Fact]
    public async Task Free_text_with_NUL_or_a_broken_surrogate_is_stored_with_replacement_characters_and_fails_no_other_write()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var bad = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var good = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var badLease = (await store.TryAcquireLeaseAsync(bad.Id, "w", TimeSpan.FromSeconds(30), default))!.Lease;
        var goodLease = (await store.TryAcquireLeaseAsync(good.Id, "w", TimeSpan.FromSeconds(30), default))!.Lease;

        // Built in code: xunit's theory data does not carry lone surrogates intact.
        await store.ReportProgressAsync(badLease, new JobProgress(0.5, "half\0way"), default);
        var outcomes = await Task.WhenAll(
            store.CompleteAttemptAsync(badLease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "bad\0text \uD800", ErrorType = "X\uDC00" }, default).AsTask(),
            store.CompleteAttemptAsync(goodLease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default).AsTask());

        Assert.Equal([JobState.Failed, JobState.Succeeded], outcomes);
        var failed = (await store.GetAsync(bad.Id, default))!;
        Assert.Equal(("bad\uFFFDtext \uFFFD", "X\uFFFD"), (failed.Attempts[0].Error, failed.Attempts[0].ErrorType));
        var cancelled = await store.RequestCancellationAsync((await store.InsertAsync(Jobs.New(_time), default)).Job.Id, "stop\0now \U0001F600", default);
        Assert.Equal((JobState.Cancelled, "stop\uFFFDnow \U0001F600"), (cancelled.State, cancelled.LastError));
    }

    [Fact]
    public async Task Two_requests_for_one_job_in_one_lease_batch_get_one_lease()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var other = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;

        // The first batch waits after its write, so that both requests for the job are written together (in it, or in
        // the next one).
        using var release = new ManualResetEventSlim();
        var batches = 0;
        store.AfterLeaseBatch = _ =>
        {
            if (Interlocked.Increment(ref batches) == 1)
            {
                release.Wait(TimeSpan.FromSeconds(30));
            }
        };
        var first = store.TryAcquireLeaseAsync(other.Id, "w0", TimeSpan.FromSeconds(30), default).AsTask();
        var a = store.TryAcquireLeaseAsync(job.Id, "w1", TimeSpan.FromSeconds(30), default).AsTask();
        var b = store.TryAcquireLeaseAsync(job.Id, "w2", TimeSpan.FromSeconds(30), default).AsTask();
        release.Set();
        await first.WaitAsync(TimeSpan.FromSeconds(30));
        var leases = await Task.WhenAll(a, b).WaitAsync(TimeSpan.FromSeconds(30));

        var granted = Assert.Single(leases, l => l is not null)!;
        var stored = (await store.GetAsync(job.Id, default))!;
        Assert.Equal((JobState.Running, granted.Lease.FenceToken, 1), (stored.State, stored.FenceToken, stored.Attempts.Count));
    }

    [Fact]
    public async Task A_lease_batch_retried_after_its_commits_reply_was_lost_grants_what_the_first_try_wrote()
    {
        // The retry's back-off runs on the real clock.
        var (_, store, _, _) = _database.OpenStore(TimeProvider.System);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        store.AfterLeaseBatch = attempt =>
        {
            if (attempt == 1)
            {
                throw new NpgsqlException("The connection broke after the commit.", new IOException("Connection reset by peer"));
            }
        };

        var leased = await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default);

        Assert.NotNull(leased);
        var stored = (await store.GetAsync(job.Id, default))!;
        Assert.Equal((JobState.Running, leased.Lease.FenceToken, 1, "w"), (stored.State, stored.FenceToken, stored.Attempts.Count, stored.Attempts[0].WorkerId));
    }

    [Fact]
    public async Task A_completion_retried_after_its_commits_reply_was_lost_is_accepted_and_published()
    {
        // The retry's back-off runs on the real clock.
        var (_, store, _, events) = _database.OpenStore(TimeProvider.System);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var leased = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!;
        store.AfterCompleteBatch = tries =>
        {
            if (tries == 1)
            {
                throw new NpgsqlException("The connection broke after the commit.", new IOException("Connection reset by peer"));
            }
        };
        using var stop = new CancellationTokenSource();
        var heard = events.SubscribeAsync(new JobEventFilter { JobId = job.Id, Kinds = new HashSet<JobEventKind> { JobEventKind.StateChanged } }, stop.Token).GetAsyncEnumerator();
        var next = heard.MoveNextAsync().AsTask();

        var state = await store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default);

        Assert.Equal(JobState.Succeeded, state);
        Assert.True(await next.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(JobState.Succeeded, heard.Current.State);
        Assert.Single((await store.GetAsync(job.Id, default))!.Attempts);
        await stop.CancelAsync();
    }

    [Fact]
    public async Task Two_attempts_of_one_job_completing_in_one_batch_each_get_their_own_answer()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var stale = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(5), default))!;
        _time.Advance(TimeSpan.FromSeconds(6));
        await store.ReclaimExpiredLeasesAsync(default);
        var current = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!;

        // Both in one batch: the first batch is held, in flight, until both wait behind it.
        using var release = new ManualResetEventSlim();
        var inFlight = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batches = 0;
        store.AfterCompleteBatch = _ =>
        {
            if (Interlocked.Increment(ref batches) == 1)
            {
                inFlight.SetResult();
                release.Wait(TimeSpan.FromSeconds(30));
            }
        };
        var other = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var otherLease = (await store.TryAcquireLeaseAsync(other.Id, "w", TimeSpan.FromSeconds(30), default))!;
        var first = store.CompleteAttemptAsync(otherLease.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default).AsTask();
        await inFlight.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var old = store.CompleteAttemptAsync(stale.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "stale" }, default).AsTask();
        var now = store.CompleteAttemptAsync(current.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded }, default).AsTask();
        release.Set();
        await first.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.Equal(JobState.Succeeded, await now.WaitAsync(TimeSpan.FromSeconds(30)));
        await Assert.ThrowsAsync<StaleFenceTokenException>(() => old.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task A_manual_retry_retried_after_its_reply_was_lost_requeues_once_even_if_the_job_failed_again_meanwhile()
    {
        // The retry's back-off runs on the real clock.
        var (_, store, _, _) = _database.OpenStore(TimeProvider.System);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        await FailAsync();

        // The requeue commits, its reply is lost, and before the call tries again the job runs and fails once more.
        store.AfterRequeue = tries =>
        {
            if (tries == 1)
            {
                FailAsync().GetAwaiter().GetResult();
                throw new NpgsqlException("The connection broke after the commit.", new IOException("Connection reset by peer"));
            }
        };
        var requeued = await store.RequeueAsync(job.Id, default);

        var stored = (await store.GetAsync(job.Id, default))!;
        Assert.Equal((JobState.Failed, 2), (stored.State, stored.Attempts.Count));
        Assert.Equal(stored.State, requeued.State);
        Assert.Equal(1L, await _database.ScalarAsync<long>($"SELECT count(*) FROM {{s}}.job_history WHERE job_id = '{job.Id.Value}' AND message = 'Retried by request.'"));

        async Task FailAsync()
        {
            var leased = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!;
            await store.CompleteAttemptAsync(leased.Lease, new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Failed, Error = "boom" }, default);
        }
    }

    [Fact]
    public async Task Renewing_a_stale_and_a_current_lease_of_one_job_reports_the_job_lost_and_renews_the_current()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var stale = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!.Lease;
        _time.Advance(TimeSpan.FromSeconds(31));
        await store.ReclaimExpiredLeasesAsync(default);
        var current = (await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default))!.Lease;

        Assert.Equal([job.Id], await store.RenewLeasesAsync([stale, current], TimeSpan.FromSeconds(30), default));

        // Renewed: still held 50 s after it was granted, past its first expiry.
        _time.Advance(TimeSpan.FromSeconds(50));
        Assert.Empty(await store.RenewLeasesAsync([current], TimeSpan.FromSeconds(30), default));
        Assert.Empty(await store.ReclaimExpiredLeasesAsync(default));
    }

    [Fact]
    public async Task Asking_again_to_cancel_a_running_job_tells_this_hosts_workers_again()
    {
        // As a request retried after its commit's reply was lost does: this host's listener ignores its own NOTIFY.
        var (_, store, _, events) = _database.OpenStore(_time);
        using var stop = new CancellationTokenSource();
        var heard = events.SubscribeAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } }, stop.Token).GetAsyncEnumerator();
        var next = heard.MoveNextAsync().AsTask(); // subscribes
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(30), default);

        await store.RequestCancellationAsync(job.Id, "stop it", default);
        Assert.True(await next.WaitAsync(TimeSpan.FromSeconds(30)));
        next = heard.MoveNextAsync().AsTask();
        await store.RequestCancellationAsync(job.Id, "stop it", default);
        Assert.True(await next.WaitAsync(TimeSpan.FromSeconds(30)));

        Assert.Equal((job.Id, "stop it"), (heard.Current.JobId, heard.Current.Message));
        await stop.CancelAsync();
        await heard.DisposeAsync();
    }

    [Fact]
    public async Task A_job_whose_lease_keeps_expiring_is_quarantined_as_failed()
    {
        var (_, store, _, _) = _database.OpenStore(_time, o => o.MaxLeaseExpirations = 2);
        var job = (await store.InsertAsync(Jobs.New(_time), default)).Job;

        for (var i = 0; i < 2; i++)
        {
            Assert.NotNull(await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(5), default));
            _time.Advance(TimeSpan.FromSeconds(6));
            await store.ReclaimExpiredLeasesAsync(default);
        }

        var quarantined = await store.GetAsync(job.Id, default);
        Assert.Equal(JobState.Failed, quarantined!.State);
        Assert.Contains("Quarantined", quarantined.LastError, StringComparison.Ordinal);
        Assert.Contains("2 times", quarantined.LastError, StringComparison.Ordinal);
        Assert.Contains("MaxLeaseExpirations", quarantined.LastError, StringComparison.Ordinal);

        // Retried by hand (the cause fixed): it starts counting afresh, and one expiry only queues it again.
        await store.RequeueAsync(job.Id, default);
        Assert.NotNull(await store.TryAcquireLeaseAsync(job.Id, "w", TimeSpan.FromSeconds(5), default));
        _time.Advance(TimeSpan.FromSeconds(6));
        await store.ReclaimExpiredLeasesAsync(default);
        Assert.Equal(JobState.Queued, (await store.GetAsync(job.Id, default))!.State);
    }

    [Theory]
    [InlineData("retry = '{\"b\":\"Sometimes\"}'")] // an unknown back-off
    [InlineData("labels = '[]'")] // JSON of the wrong kind (InvalidOperationException inside)
    [InlineData("retry = '{\"b\":\"Fixed\",\"m\":\"3\"}'")] // a string where a number belongs
    [InlineData("attempts = '[{\"n\":\"1\"}]'")]
    public async Task A_malformed_row_fails_that_job_only(string corruption)
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var good = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        var bad = (await store.InsertAsync(Jobs.New(_time), default)).Job;
        await _database.ExecuteAsync($"UPDATE {{s}}.jobs SET {corruption} WHERE id = '{bad.Id}'");

        var leases = await Task.WhenAll(
            store.TryAcquireLeaseAsync(good.Id, "w", TimeSpan.FromSeconds(30), default).AsTask(),
            store.TryAcquireLeaseAsync(bad.Id, "w", TimeSpan.FromSeconds(30), default).AsTask());

        Assert.NotNull(leases[0]);
        Assert.Null(leases[1]);
        Assert.Equal((short)JobState.Failed, await _database.ScalarAsync<short>($"SELECT state FROM {{s}}.jobs WHERE id = '{bad.Id}'"));
        Assert.Contains("could not be read", await _database.ScalarAsync<string>($"SELECT last_error FROM {{s}}.jobs WHERE id = '{bad.Id}'"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task List_filters_and_pages_oldest_first()
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        var ids = new List<JobId>();
        for (var i = 0; i < 5; i++)
        {
            ids.Add((await store.InsertAsync(Jobs.New(_time, tenant: i % 2 == 0 ? "even" : "odd"), default)).Job.Id);
        }

        var page1 = await store.ListAsync(new JobQuery { Tenant = "even", PageSize = 2 }, default);
        var page2 = await store.ListAsync(new JobQuery { Tenant = "even", PageSize = 2, ContinuationToken = page1.ContinuationToken }, default);
        var labelled = await store.ListAsync(new JobQuery { Labels = new Dictionary<string, string> { ["team"] = "a" }, State = JobState.Queued }, default);

        Assert.Equal([ids[0], ids[2]], page1.Items.Select(j => j.Id));
        Assert.Equal([ids[4]], page2.Items.Select(j => j.Id));
        Assert.Null(page2.ContinuationToken);
        Assert.Equal(5, labelled.Items.Count);
    }

    /// <summary>A queued job with every optional request field set.</summary>
    private JobRecord JobWithEveryField()
    {
        var job = Jobs.New(_time, retry: RetryPolicy.Exponential(TimeSpan.FromSeconds(2), 4, TimeSpan.FromMinutes(1), useJitter: false));
        return job with { Request = job.Request with { ConcurrencyKey = "k", ParentId = JobId.New(_time), NotBefore = _time.GetUtcNow().AddMinutes(1), Affinity = "gpu=true, !spot" } };
    }

    private static void AssertStoredAsSubmitted(JobRecord job, JobRecord read)
    {
        Assert.Equal(job.Id, read.Id);
        Assert.Equal(JobState.Queued, read.State);
        Assert.Equal("{\"n\":1}", System.Text.Encoding.UTF8.GetString(read.Request.Input.Span));
        Assert.Equal("a", read.Request.Labels["team"]);
        Assert.Equal(TimeSpan.FromSeconds(90), read.Request.Timeout);
        Assert.Equal(job.Request.Retry, read.Request.Retry);
        Assert.Equal("k", read.Request.ConcurrencyKey);
        Assert.Equal(job.Request.ParentId, read.Request.ParentId);
        Assert.Equal(job.Request.NotBefore, read.Request.NotBefore);
        Assert.Equal("corr", read.Request.CorrelationId);
        Assert.Equal("gpu=true, !spot", read.Request.Affinity);
        Assert.Equal(job.Request.Priority, read.Request.Priority);
        Assert.Equal(job.CreatedAt, read.CreatedAt);
    }
}
