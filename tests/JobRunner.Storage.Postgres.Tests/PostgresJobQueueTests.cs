using Microsoft.Extensions.DependencyInjection;
using NSubstitute;
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
    public async Task A_due_scheduled_job_is_marked_for_the_walk_and_unmarked_when_a_retry_schedules_it_again()
    {
        // No poll before the due time: the clock's advance fires only the dequeue's wait for it.
        var (_, store, queue, _) = _database.OpenStore(_time, o => o.PollInterval = TimeSpan.FromHours(1));
        // Tenants whose only jobs wait for later are not in the walked index at all.
        for (var i = 0; i < 20; i++)
        {
            await store.InsertAsync(Jobs.New(_time, tenant: $"later{i:00}", dueAt: _time.GetUtcNow().AddHours(1)), default);
        }

        var id = await Insert(store, dueAt: _time.GetUtcNow().AddSeconds(10));
        Assert.Equal(0L, await _database.ScalarAsync<long>("SELECT count(*) FROM {s}.jobs WHERE state = 0 OR (state = 1 AND due)"));
        _time.Advance(TimeSpan.FromSeconds(10));

        Assert.Equal(id, Assert.Single(await Dequeue(queue, 10)).Id);
        Assert.True(await Due(id));
        var leased = await store.TryAcquireLeaseAsync(id, "w1", TimeSpan.FromMinutes(1), default);
        await store.CompleteAttemptAsync(
            leased!.Lease,
            new AttemptCompletion { Outcome = AttemptOutcome.Failed, NextState = JobState.Scheduled, DueAt = _time.GetUtcNow().AddMinutes(5), Error = "again" },
            default);
        Assert.False(await Due(id));

        // Not taken before its new due time (the dequeue waits), then taken.
        var buffer = new QueuedJob[10];
        var timers = _time.TimerCount;
        var waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync(timers);
        Assert.False(waiting.IsCompleted);
        _time.Advance(TimeSpan.FromMinutes(5));
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(id, buffer[0].Id);
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

        // No clock advance: only the NOTIFY can wake it (the poll interval is an hour). It offers the job, which B takes
        // without a second look: its only look found nothing, and nothing but that offer came since.
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(record.Id, buffer[0].Id);
        Assert.Equal(record.Request.Workload, buffer[0].Workload);
        Assert.Equal(1, queueB.Looks);
        Assert.Equal(1, queueB.OffersTaken);
        Assert.NotNull(await storeB.TryAcquireLeaseAsync(record.Id, "w1", TimeSpan.FromMinutes(1), default));
        await listener.StopAsync(default);
    }

    [Fact]
    public async Task After_a_dequeue_that_took_every_ready_job_the_next_waits_for_a_wake_up_instead_of_looking_again()
    {
        var (db, store, queue, _) = _database.OpenStore(_time, o => o.PollInterval = TimeSpan.FromHours(1));
        await Insert(store);
        var buffer = new QueuedJob[4];
        Assert.Equal(1, await queue.DequeueAsync(buffer, Visibility, default));

        // Fewer than asked: the next call waits (the wake-up it waits for was captured before the first look).
        var waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync();
        Assert.Equal(1, queue.Looks);
        var next = Jobs.New(_time);
        await store.InsertAsync(next, default);
        await queue.EnqueueAsync(QueuedJob.For(next, _time.GetUtcNow()), default);

        // The enqueue offered the job: taken without a second look.
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(next.Id, buffer[0].Id);
        Assert.Equal(1, queue.Looks);
        Assert.Equal(1, queue.OffersTaken);

        // Until its lease is written the offered job's row is ready, so the next call does not ask for the next due time
        // (that would find it due now, and look): only offers came since the last time it asked.
        using (var stop = new CancellationTokenSource())
        {
            var timers = _time.TimerCount;
            var idle = queue.DequeueAsync(buffer, Visibility, stop.Token).AsTask();
            await WaitForTimerAsync(timers);
            Assert.Equal(1, queue.Looks);
            Assert.False(idle.IsCompleted);
            await stop.CancelAsync();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => idle);
        }

        Assert.NotNull(await store.TryAcquireLeaseAsync(next.Id, "w1", TimeSpan.FromMinutes(1), default));

        // A job made ready without an offer (a plain wake-up, as returns and other hosts' large batches send) besides an
        // offered one: the offer is not all there is, so the next call looks.
        var unannounced = await Insert(store);
        var offered = Jobs.New(_time);
        await store.InsertAsync(offered, default);
        await queue.EnqueueAsync(QueuedJob.For(offered, _time.GetUtcNow()), default);
        db.Ready.Set();

        Assert.Equal(2, await queue.DequeueAsync(buffer, Visibility, default));
        Assert.Equal(new[] { unannounced, offered.Id }.Order(), buffer.Take(2).Select(j => j.Id).Order());
        Assert.Equal(2, queue.Looks);
        Assert.Equal(1, queue.OffersTaken);
    }

    [Fact]
    public async Task Offers_do_not_put_off_a_job_that_falls_due_nor_one_only_some_workers_may_run()
    {
        var (_, store, queue, _) = _database.OpenStore(_time, o => o.PollInterval = TimeSpan.FromHours(1));
        await Insert(store);
        var buffer = new QueuedJob[4];
        Assert.Equal(1, await queue.DequeueAsync(buffer, Visibility, default));
        var due = await Insert(store, priority: 9, dueAt: _time.GetUtcNow().AddSeconds(10));

        // The next call asks for the next due time (the retry above, in 10 s) and waits; an offer comes.
        var waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync();
        Assert.Equal(1, await Offer(store, queue, waiting));
        Assert.Equal(1, queue.OffersTaken);
        Assert.NotNull(await store.TryAcquireLeaseAsync(buffer[0].Id, "w1", TimeSpan.FromHours(1), default));

        // The due time passes while no call waits; another offer: the due job is looked for with it.
        _time.Advance(TimeSpan.FromSeconds(10));
        var offered = await Offer(store, queue);
        Assert.Equal(2, await queue.DequeueAsync(buffer, Visibility, default));
        Assert.Equal(new[] { due, offered }, buffer.Take(2).Select(j => j.Id));
        Assert.Equal(2, queue.Looks);

        // A while after the last time it asked (a busy worker), offers are not trusted either.
        var timers = _time.TimerCount;
        waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync(timers);
        _time.Advance(PostgresJobQueue.OfferWindow);
        Assert.Equal(1, await Offer(store, queue, waiting));
        Assert.Equal(3, queue.Looks);
        Assert.Equal(1, queue.OffersTaken);

        // A job with an affinity is not offered (every idle worker would take it, and some give it back): a plain wake-up.
        timers = _time.TimerCount;
        waiting = queue.DequeueAsync(buffer, Visibility, default).AsTask();
        await WaitForTimerAsync(timers);
        var picky = Jobs.New(_time) with { Request = new JobRequest("work") { Affinity = "gpu" } };
        await store.InsertAsync(picky, default);
        await queue.EnqueueAsync(QueuedJob.For(picky, _time.GetUtcNow()), default);
        Assert.Equal(1, await waiting.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(picky.Id, buffer[0].Id);
        Assert.Equal(1, queue.OffersTaken);
    }

    /// <summary>Inserts a job and enqueues it (offering it), then awaits <paramref name="waiting"/> if given.</summary>
    private async Task<int> Offer(PostgresJobStore store, PostgresJobQueue queue, Task<int> waiting)
    {
        await Offer(store, queue);
        return await waiting.WaitAsync(TimeSpan.FromSeconds(30));
    }

    private async Task<JobId> Offer(PostgresJobStore store, PostgresJobQueue queue)
    {
        var job = Jobs.New(_time);
        await store.InsertAsync(job, default);
        await queue.EnqueueAsync(QueuedJob.For(job, _time.GetUtcNow()), default);
        return job.Id;
    }

    [Fact]
    public async Task Dequeue_gives_a_tenant_its_jobs_while_another_tenant_floods_the_same_band()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        await InsertMany(store, "flood", 2_000);
        _time.Advance(TimeSpan.FromSeconds(1));
        var later = await InsertMany(store, "later", 5);

        var buffer = new QueuedJob[64];
        Assert.Equal(64, await queue.DequeueAsync(buffer, Visibility, default));

        Assert.Equal(later.Order(), buffer.Where(b => b.Tenant == "later").Select(b => b.Id).Order());
        Assert.Equal(59, buffer.Count(b => b.Tenant == "flood"));
    }

    [Fact]
    public async Task Dequeue_takes_a_lower_band_only_when_the_higher_bands_have_nothing_left_whatever_the_tenants()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        var low = await InsertMany(store, "d", 3, priority: 2);
        var middle = await InsertMany(store, "a", 10, priority: 5);
        var high = (await InsertMany(store, "b", 3, priority: 9)).Concat(await InsertMany(store, "c", 2, priority: 9)).ToList();

        var first = await Dequeue(queue, 4);
        Assert.Equal(4, first.Count);
        Assert.All(first, j => Assert.Equal(9, j.Priority));
        Assert.Equal(["b", "c"], first.Select(j => j.Tenant).Distinct().Order());

        var second = await Dequeue(queue, 8);
        Assert.Equal(high.Order(), first.Concat(second.Where(j => j.Priority == 9)).Select(j => j.Id).Order());
        Assert.Equal(7, second.Count(j => j.Priority == 5));

        var third = await Dequeue(queue, 10);
        Assert.Equal(middle.Order(), second.Concat(third).Where(j => j.Priority == 5).Select(j => j.Id).Order());
        Assert.Equal(low.Order(), third.Where(j => j.Priority == 2).Select(j => j.Id).Order());
        Assert.Equal(6, third.Count);
    }

    [Fact]
    public async Task Successive_dequeues_visit_every_tenant_when_there_are_more_than_one_dequeue_takes()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        queue.MaxTenantsPerDequeue = 3;
        var tenants = Enumerable.Range(0, 10).Select(i => $"t{i:00}").ToArray();
        foreach (var tenant in tenants)
        {
            await InsertMany(store, tenant, 2);
        }

        var seen = new HashSet<string>();
        for (var call = 0; call < 4; call++)
        {
            var jobs = await Dequeue(queue, 10);
            var taken = jobs.Select(j => j.Tenant).Distinct().ToList();
            Assert.InRange(taken.Count, 1, 3);
            Assert.All(taken, t => Assert.DoesNotContain(t, seen));
            seen.UnionWith(taken);
            await queue.AcknowledgeAsync(jobs, default);
        }

        Assert.Equal(tenants, seen.Order());
    }

    [Fact]
    public async Task Each_dequeue_starts_after_the_tenant_the_previous_one_stopped_at_and_wraps_round()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        queue.MaxTenantsPerDequeue = 3;
        foreach (var tenant in Enumerable.Range(0, 10).Select(i => $"t{i:00}"))
        {
            await InsertMany(store, tenant, 20);
        }

        var calls = new List<string>();
        for (var call = 0; call < 4; call++)
        {
            var jobs = await Dequeue(queue, 3);
            calls.Add(string.Join(",", jobs.Select(j => j.Tenant).Order()));
            await queue.AcknowledgeAsync(jobs, default);
        }

        // Every tenant still has jobs: only the rotation point moves the walk on (without it, every call would start at t00).
        Assert.Equal(["t00,t01,t02", "t03,t04,t05", "t06,t07,t08", "t00,t01,t09"], calls);
    }

    [Fact]
    public async Task Tenants_whose_jobs_another_worker_holds_are_passed_over_however_many_and_do_not_count_against_the_cap()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        queue.MaxTenantsPerDequeue = 12;
        var tenants = Enumerable.Range(0, 200).Select(i => $"t{i:000}").ToArray();
        foreach (var tenant in tenants)
        {
            await InsertMany(store, tenant, 1);
        }

        // Another worker is taking the first 150 tenants' jobs: their rows stay locked until it commits.
        await using var other = new Npgsql.NpgsqlConnection(_database.ConnectionString);
        await other.OpenAsync();
        await using var holding = await other.BeginTransactionAsync();
        await using (var lockRows = new Npgsql.NpgsqlCommand($"SELECT id FROM \"{_database.Schema}\".jobs WHERE tenant < 't150' FOR UPDATE", other, holding))
        {
            await lockRows.ExecuteNonQueryAsync();
        }

        var jobs = await Dequeue(queue, 10);

        // The walk goes past the 150 that give nothing (more than one stretch of it, and many groups), and they do not use up
        // the cap of 12: the next ten tenants give one job each.
        Assert.Equal(tenants[150..160], jobs.Select(j => j.Tenant));
    }

    [Theory]
    // A gives less than it wants: B gets the rest of the batch, and nothing comes from the lower band (C).
    [InlineData("a:3,b:100,c:5@4", "a:8,b:8", 10, "a:3,b:7")]
    // B is asked for nothing: A, which gave all it was asked, takes the batch's room before B does.
    [InlineData("a:50,b:50", "a:2,b:0", 4, "a:4")]
    // Tenants nobody asked about take the default want of 1, then double while they keep giving.
    [InlineData("a:50,b:50,c:50", "", 9, "a:3,b:3,c:3")]
    public async Task The_dequeue_function_shares_a_batch_by_the_wants_it_is_given(string backlog, string wants, int limit, string expected)
    {
        var (_, store, _, _) = _database.OpenStore(_time);
        foreach (var entry in backlog.Split(','))
        {
            var (tenant, rest) = (entry.Split(':')[0], entry.Split(':')[1]);
            var count = int.Parse(rest.Split('@')[0], System.Globalization.CultureInfo.InvariantCulture);
            var priority = rest.Contains('@', StringComparison.Ordinal) ? int.Parse(rest.Split('@')[1], System.Globalization.CultureInfo.InvariantCulture) : 5;
            await InsertMany(store, tenant, count, priority);
        }

        var pairs = wants.Length == 0 ? [] : wants.Split(',').Select(w => w.Split(':')).ToArray();
        var tenants = string.Join(",", pairs.Select(p => $"'{p[0]}'"));
        var asks = string.Join(",", pairs.Select(p => p[1]));
        var now = _time.GetUtcNow().AddSeconds(1).ToString("O", System.Globalization.CultureInfo.InvariantCulture);
        var taken = await _database.ScalarAsync<string>(
            $"SELECT string_agg(tenant || ':' || n, ',' ORDER BY tenant) FROM (SELECT tenant, count(*) AS n FROM {{s}}.dequeue('{now}', '{now}'::timestamptz + interval '30 seconds', {limit}, NULL, ARRAY[{tenants}]::text[], ARRAY[{asks}]::integer[], 1, 128) WHERE id IS NOT NULL GROUP BY tenant) t");

        Assert.Equal(expected, taken);
    }

    [Fact]
    public async Task A_high_priority_retry_that_comes_due_is_taken_before_many_earlier_low_priority_ones()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        var start = _time.GetUtcNow();
        var low = Enumerable.Range(0, 300).Select(_ => Jobs.New(_time, priority: 1, dueAt: start.AddSeconds(10))).ToList();
        await store.InsertManyAsync(low, default);
        var high = await store.InsertAsync(Jobs.New(_time, priority: 9, dueAt: start.AddSeconds(20)), default);
        _time.Advance(TimeSpan.FromSeconds(30));

        // One call marks fewer due rows than the 300 low ones: marking oldest first would leave the high one unmarked.
        var jobs = await Dequeue(queue, 1);

        Assert.Equal(high.Job.Id, Assert.Single(jobs).Id);
    }

    [Fact]
    public async Task What_dequeues_hand_out_follows_the_tenants_weights_when_the_worker_consumes_by_them()
    {
        var weights = Substitute.For<ISchedulerControl>();
        weights.GetTenantWeight(Arg.Any<string>()).Returns(1);
        weights.GetTenantWeight("gold").Returns(4);
        var db = _database.Open(_time);
        var store = new PostgresJobStore(db, Substitute.For<IJobEventBus>());
        var queue = new PostgresJobQueue(db, weights);
        // Bronze first: oldest first would hand out only bronze.
        await InsertMany(store, "bronze", 600);
        _time.Advance(TimeSpan.FromSeconds(1));
        await InsertMany(store, "gold", 600);

        // A worker that holds 40 jobs and, like the scheduler, runs gold and bronze 4:1 while it holds both.
        const int Capacity = 40;
        var held = new List<QueuedJob>();
        var handedOut = new Dictionary<string, int> { ["gold"] = 0, ["bronze"] = 0 };
        for (var round = 0; round < 30; round++)
        {
            var jobs = await Dequeue(queue, Capacity - held.Count);
            held.AddRange(jobs);
            // From when the bronze the first dequeue handed out (before the queue knew either tenant) has been run.
            if (round >= 10)
            {
                foreach (var job in jobs)
                {
                    handedOut[job.Tenant]++;
                }
            }

            Assert.Equal(held.Count(j => j.Tenant == "gold"), queue.InFlight("gold"));
            var done = held.Where(j => j.Tenant == "gold").Take(8).Concat(held.Where(j => j.Tenant == "bronze").Take(2)).ToList();
            await queue.AcknowledgeAsync(done, default);
            held.RemoveAll(done.Contains);
        }

        var ratio = (double)handedOut["gold"] / handedOut["bronze"];
        Assert.InRange(ratio, 3.5, 4.5);
        held.AddRange(await Dequeue(queue, Capacity - held.Count));
        Assert.Equal(Capacity, held.Count);
        Assert.InRange(held.Count(j => j.Tenant == "gold"), 30, 34);
    }

    [Fact]
    public async Task The_registered_queue_reads_the_weights_of_the_hosts_scheduler()
    {
        await using var services = new ServiceCollection()
            .AddSingleton<TimeProvider>(_time)
            .AddJobRunner(r => r
                .UsePostgres(_database.ConnectionString, o => o.Schema = _database.Schema)
                .ConfigureScheduler(s => s.TenantTiers["acme"] = "gold"))
            .BuildServiceProvider();
        var store = services.GetRequiredService<PostgresJobStore>();
        var queue = services.GetRequiredService<PostgresJobQueue>();
        await InsertMany(store, "acme", 100);
        await InsertMany(store, "other", 100);

        // The first dequeue meets both tenants; the next ones share by weight (gold 4, the default 1).
        await queue.AcknowledgeAsync(await Dequeue(queue, 20), default);
        var second = await Dequeue(queue, 20);

        Assert.Equal(16, second.Count(j => j.Tenant == "acme"));
        Assert.Equal(4, second.Count(j => j.Tenant == "other"));
    }

    [Fact]
    public async Task A_single_tenant_fills_a_whole_batch_first_time_and_afterwards()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        await InsertMany(store, "solo", 300);

        Assert.Equal(128, (await Dequeue(queue, 128)).Count);
        Assert.Equal(128, (await Dequeue(queue, 128)).Count);
        Assert.Equal(44, (await Dequeue(queue, 128)).Count);
        Assert.Equal(300, queue.InFlight("solo"));
    }

    [Fact]
    public async Task In_flight_counts_drop_once_per_delivery_whether_acknowledged_returned_repeated_or_lapsed()
    {
        var (_, store, queue, _) = _database.OpenStore(_time);
        await InsertMany(store, "a", 20);
        var jobs = await Dequeue(queue, 20);
        Assert.Equal(20, queue.InFlight("a"));

        await queue.AcknowledgeAsync(jobs[..5], default);
        await queue.AcknowledgeAsync(jobs[..5], default);
        Assert.Equal(15, queue.InFlight("a"));

        await queue.ReturnAsync(jobs[5..8], default);
        await queue.ReturnAsync(jobs[5..8], default);
        await queue.AcknowledgeAsync(jobs[5..8], default);
        Assert.Equal(12, queue.InFlight("a"));

        // A copy of a delivery is not that delivery.
        await queue.AcknowledgeAsync([jobs[8] with { }], default);
        Assert.Equal(12, queue.InFlight("a"));

        // The returned jobs come back as new deliveries.
        var again = await Dequeue(queue, 20);
        Assert.Equal(jobs[5..8].Select(j => j.Id).Order(), again.Select(j => j.Id).Order());
        Assert.Equal(15, queue.InFlight("a"));

        // Extended deliveries stay counted past their first visibility; the others lapse and are no longer counted.
        await queue.ExtendAsync(jobs[8..10], TimeSpan.FromMinutes(5), default);
        _time.Advance(Visibility + TimeSpan.FromSeconds(1));
        var lapsed = await Dequeue(queue, 20);
        // Acknowledging leaves the row to the store, which leased nothing here: the acknowledged five come back too.
        Assert.Equal(5 + 10 + 3, lapsed.Count);
        Assert.Equal(2 + lapsed.Count, queue.InFlight("a"));

        await queue.AcknowledgeAsync(jobs, default);
        await queue.AcknowledgeAsync(again, default);
        await queue.AcknowledgeAsync(lapsed, default);
        Assert.Equal(0, queue.InFlight("a"));
    }

    private Task<bool> Due(JobId id) => _database.ScalarAsync<bool>($"SELECT due FROM {{s}}.jobs WHERE id = '{id}'");

    private static async Task<List<QueuedJob>> Dequeue(PostgresJobQueue queue, int limit)
    {
        var buffer = new QueuedJob[limit];
        var got = await queue.DequeueAsync(buffer, Visibility, default);
        return buffer[..got].ToList();
    }

    private async Task<List<JobId>> InsertMany(PostgresJobStore store, string tenant, int count, int priority = 5)
    {
        var jobs = Enumerable.Range(0, count).Select(_ => Jobs.New(_time, tenant: tenant, priority: priority)).ToList();
        var results = await store.InsertManyAsync(jobs, default);
        return results.Select(r => r.Job.Id).ToList();
    }

    private async Task WaitForTimerAsync(int before = 0)
    {
        // The dequeue found nothing and armed its wait timer on the fake clock.
        for (var i = 0; _time.TimerCount <= before; i++)
        {
            Assert.True(i < 3000, "The dequeue never started waiting.");
            await Task.Delay(TimeSpan.FromMilliseconds(1), TimeProvider.System);
        }
    }

    private async Task<JobId> Insert(PostgresJobStore store, int priority = 5, DateTimeOffset? dueAt = null)
        => (await store.InsertAsync(Jobs.New(_time, priority: priority, dueAt: dueAt), default)).Job.Id;
}
