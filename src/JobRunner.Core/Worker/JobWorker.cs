using System.Diagnostics;
using System.Text.Json;
using JobRunner.Configuration;
using JobRunner.Telemetry;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;

namespace JobRunner.Worker;

/// <summary>
/// The worker host. A feeder takes ready jobs from the queue, never more than there are free slots; each slot leases
/// its job in the store (a new fence token), runs it through the workload's engine, classifies the outcome and writes
/// it back fenced. One heartbeat loop renews all leases in one batch; one reclaim loop takes back expired leases.
/// On stop: <see cref="WorkloadContext.CheckpointRequested"/>, a grace period, then cancel and release the leases.
/// </summary>
internal sealed partial class JobWorker : BackgroundService
{
    private static readonly AttemptCompletion s_succeeded = new() { Outcome = AttemptOutcome.Succeeded, NextState = JobState.Succeeded };

    private readonly IJobQueue _queue;
    private readonly IJobEventBus _events;
    private readonly WorkloadRegistry _registry;
    private readonly WorkerOptions _options;
    private readonly JobRunnerTelemetry _telemetry;
    private readonly ILogger _logger;
    // One cell per slot: the attempt it runs. Written only by its slot; read by the heartbeat, the cancellation
    // listener and the shutdown. A job delivered twice may briefly sit in two cells: only one of them gets the lease.
    private readonly ActiveAttempt?[] _active;
    // Per slot: the cancellation source its last attempt handed back for reuse (each slot runs one attempt at a time).
    private readonly CancellationTokenSource?[] _tokens;
    // Per slot: the code of the attempt it just abandoned, when that code still runs (see RunSlotAsync).
    private readonly Task?[] _stillRunning;

    // One reusable one-job list per slot for the acknowledgement of the job it ran (queues may not keep the list).
    private readonly QueuedJob[][] _acknowledgements;
    private readonly CancellationTokenSource _checkpointRequested = new();
    private readonly CancellationTokenSource _background = new();
    private readonly JobRunner.Scheduling.JobScheduler _scheduler;
    private readonly Scheduling.ReusableSignal _feederSignal = new();
    private readonly int _feedBatch;
    private readonly int _refillAt;
    private int _free;

    // Room lent to the feeder while a slot is idle and every job the worker holds waits (behind a limit, a rate or a
    // preference): so that it looks past a lookahead full of jobs blocked by one limit to runnable jobs further in the
    // queue. At most three lookaheads (or feed batches, if more); repaid first as held jobs leave.
    private readonly int _maxLent;
    private int _lent;
    private int _feederWaiting;
    private volatile bool _stopping;
    private int _disposed;
    private PeriodicTimer? _heartbeatTimer;
    private PeriodicTimer? _reclaimTimer;
    private IAsyncEnumerator<JobEvent>? _cancellations;
    private Task<bool> _firstCancellation = Task.FromResult(false);
    // The latest give-back of parked jobs (see HeartbeatAsync); one at a time.
    private Task _giveBack = Task.CompletedTask;

    public JobWorker(
        IJobStore store,
        IJobQueue queue,
        ILogStore logs,
        IJobEventBus events,
        WorkloadRegistry registry,
        JobRunner.Scheduling.JobScheduler scheduler,
        IOptions<SchedulerOptions> schedulerOptions,
        IOptions<WorkerOptions> options,
        IOptions<JobRunnerOptions> runnerOptions,
        JobRunnerTelemetry telemetry,
        TimeProvider time,
        IServiceProvider services)
    {
        Store = store;
        _queue = queue;
        Logs = logs;
        _events = events;
        _registry = registry;
        _options = options.Value;
        SerializerOptions = runnerOptions.Value.SerializerOptions;
        _telemetry = telemetry;
        Time = time;
        Services = services;
        Scopes = services.GetRequiredService<IServiceScopeFactory>();
        _logger = (ILogger?)services.GetService(typeof(ILogger<JobWorker>)) ?? NullLogger<JobWorker>.Instance;
        _scheduler = scheduler;
        Checkpoints = new CheckpointRouter(store, (ICheckpointStore?)services.GetService(typeof(ICheckpointStore)), events, time, _options.LeaseDuration);
        _active = new ActiveAttempt?[_options.Slots];
        _tokens = new CancellationTokenSource?[_options.Slots];
        _stillRunning = new Task?[_options.Slots];
        _acknowledgements = new QueuedJob[_options.Slots][];
        for (var i = 0; i < _acknowledgements.Length; i++)
        {
            _acknowledgements[i] = new QueuedJob[1];
        }
        var lookahead = schedulerOptions.Value.Lookahead;
        _free = _options.Slots + lookahead;
        _feedBatch = Math.Min(_options.Slots * 4, 512);
        _refillAt = Math.Clamp(lookahead / 2, 1, _feedBatch);
        _maxLent = 3 * Math.Max(lookahead, _feedBatch);
    }

    public IJobStore Store { get; }

    public ILogStore Logs { get; }

    public CheckpointRouter Checkpoints { get; }

    public TimeProvider Time { get; }

    public IServiceProvider Services { get; }

    /// <summary>Gets the scope factory of <see cref="Services"/>, for attempts' DI scopes.</summary>
    public IServiceScopeFactory Scopes { get; }

    public JsonSerializerOptions SerializerOptions { get; }

    public CancellationToken CheckpointRequested => _checkpointRequested.Token;

    public string WorkerId => _options.WorkerId;

    /// <summary>Gets the number of attempts running now.</summary>
    public int ActiveCount => Active().Count();

    /// <summary>The attempts running now, read from the slots' cells.</summary>
    private IEnumerable<ActiveAttempt> Active()
    {
        for (var i = 0; i < _active.Length; i++)
        {
            if (Volatile.Read(ref _active[i]) is { } attempt)
            {
                yield return attempt;
            }
        }
    }

    public override void Dispose()
    {
        // Registered both as itself and as a hosted service, so the container may dispose it twice.
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        // Slots that outlived a host shutdown timeout may still touch the semaphore and the tokens: they are not
        // disposed (they hold no unmanaged resources), only the background loops are stopped.
        base.Dispose();
        _background.Cancel();
    }

    internal void PublishLogs(LeasedJob job, IReadOnlyList<LogEntry> entries)
    {
        if (!_events.IsWatched(JobEventKind.Log))
        {
            return;
        }

        foreach (var entry in entries)
        {
            _events.Publish(JobEvent.ForAttempt(JobEventKind.Log, job.Lease.JobId, job.Request.Tenant, job.Request.Workload, entry.Timestamp, entry.Attempt, entry.Message, log: entry));
        }
    }

    public override Task StartAsync(CancellationToken cancellationToken)
    {
        if (_options.Enabled)
        {
            // Created here, not in ExecuteAsync (which .NET 10 runs on the thread pool), so that they exist when
            // StartAsync returns: a clock advanced right after start must find the timers and the subscription.
            _heartbeatTimer = new PeriodicTimer(_options.HeartbeatInterval, Time);
            _reclaimTimer = new PeriodicTimer(_options.ReclaimInterval, Time);
            _cancellations = SubscribeToCancellations();
            _firstCancellation = _cancellations.MoveNextAsync().AsTask();
        }

        return base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!_options.Enabled)
        {
            return;
        }

        Log.WorkerStarted(_logger, WorkerId, _options.Slots);
        var background = new[]
        {
            ListenForCancellationAsync(_cancellations!, _firstCancellation),
            HeartbeatAsync(_heartbeatTimer!, _background.Token),
            ReclaimAsync(_reclaimTimer!, _background.Token),
        };
        var slots = new Task[_options.Slots];
        for (var i = 0; i < slots.Length; i++)
        {
            var slot = i;
            slots[i] = Task.Run(() => RunSlotAsync(slot), CancellationToken.None);
        }

        await FeedAsync(stoppingToken).ConfigureAwait(false);
        await ShutDownAsync(slots).ConfigureAwait(false);
        await _background.CancelAsync().ConfigureAwait(false);
        await Task.WhenAll(background).ConfigureAwait(false);
        Log.WorkerStopped(_logger, WorkerId);
    }

    /// <summary>
    /// Takes ready jobs from the queue into the scheduler, as long as this worker holds fewer than its slots plus the
    /// scheduler's lookahead: the scheduler then chooses among them by priority, tenant share and limits. When the
    /// worker holds its fill, the feeder waits until a batch's worth of room is free (or half the lookahead), not
    /// for each job that ends.
    /// </summary>
    private async Task FeedAsync(CancellationToken stoppingToken)
    {
        var buffer = new QueuedJob[_feedBatch];
        var admissions = new Scheduling.Admission[buffer.Length];
        List<QueuedJob>? declined = null;
        List<QueuedJob>? duplicates = null;
        using var stopping = stoppingToken.UnsafeRegister(static w => ((JobWorker)w!).WakeFeeder(), this);
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                var free = Volatile.Read(ref _free);
                if (free < _refillAt)
                {
                    await WaitForRoomAsync(stoppingToken).ConfigureAwait(false);
                    continue;
                }

                var got = await _queue.DequeueAsync(buffer.AsMemory(0, Math.Min(free, buffer.Length)), _options.LeaseDuration, stoppingToken).ConfigureAwait(false);

                // The room is taken before the jobs reach the scheduler (and what they did not take given back after):
                // a slot they wake that finds nothing to run must see the room gone, or it would not lend more.
                Interlocked.Add(ref _free, -got);
                _scheduler.Add(buffer.AsSpan(0, got), admissions);
                var held = 0;
                for (var i = 0; i < got; i++)
                {
                    var item = buffer[i];
                    buffer[i] = null!;
                    switch (admissions[i])
                    {
                        case Scheduling.Admission.Held:
                            held++;
                            break;
                        case Scheduling.Admission.Duplicate:
                            // A second delivery of a job this worker already holds (its visibility lapsed, or the queue
                            // delivered it twice): the scheduler kept the newer one, and the older one is acknowledged.
                            if (item is not null)
                            {
                                (duplicates ??= []).Add(item);
                            }

                            break;
                        case Scheduling.Admission.Declined:
                            // Its affinity keeps it off this worker (for now): another worker may take it.
                            (declined ??= []).Add(item);
                            break;
                        default:
                            // Parked: held aside, outside the lookahead, until the heartbeat gives it back.
                            break;
                    }
                }

                Interlocked.Add(ref _free, got - held);
                if (duplicates is { Count: > 0 })
                {
                    await _queue.AcknowledgeAsync(duplicates, CancellationToken.None).ConfigureAwait(false);
                    duplicates.Clear();
                }

                if (declined is { Count: > 0 })
                {
                    await _queue.ReturnAsync(declined, CancellationToken.None).ConfigureAwait(false);
                    declined.Clear();
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                break;
            }
            catch (Exception e)
            {
                Log.QueueFailed(_logger, e);
                await DelayQuietlyAsync(TimeSpan.FromSeconds(1), stoppingToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Waits until a slot's ending made room for a refill (or the worker stops).</summary>
    private ValueTask WaitForRoomAsync(CancellationToken stoppingToken)
    {
        var wait = _feederSignal.Wait();

        // Registered with a full fence before the re-check, and freed with a full fence before the releaser reads the
        // flag: one of the two sees the other, so a wake-up is never lost.
        Interlocked.Exchange(ref _feederWaiting, 1);
        if ((Volatile.Read(ref _free) >= _refillAt || stoppingToken.IsCancellationRequested)
            && Interlocked.Exchange(ref _feederWaiting, 0) == 1)
        {
            return ValueTask.CompletedTask;
        }

        // Whoever cleared the flag sets the signal (or is about to).
        return wait;
    }

    private void WakeFeeder()
    {
        if (Interlocked.Exchange(ref _feederWaiting, 0) == 1)
        {
            _feederSignal.Set();
        }
    }

    /// <summary>Gives back the room a held job took, once it left the scheduler: to what was lent first.</summary>
    private void FreeRoom()
    {
        for (var lent = Volatile.Read(ref _lent); lent > 0; lent = Volatile.Read(ref _lent))
        {
            if (Interlocked.CompareExchange(ref _lent, lent - 1, lent) == lent)
            {
                return;
            }
        }

        if (Interlocked.Increment(ref _free) >= _refillAt && Volatile.Read(ref _feederWaiting) == 1)
        {
            WakeFeeder();
        }
    }

    /// <summary>
    /// A slot found nothing it may run among the jobs this worker holds: if the feeder is out of room, lend it a batch's
    /// worth (up to three lookaheads or feed batches in all), so that it takes more jobs from the queue, among them perhaps
    /// one that runs.
    /// </summary>
    private void LendRoom()
    {
        for (var lent = Volatile.Read(ref _lent); Volatile.Read(ref _free) < _refillAt && lent < _maxLent; lent = Volatile.Read(ref _lent))
        {
            var more = Math.Min(_feedBatch, _maxLent - lent);
            if (Interlocked.CompareExchange(ref _lent, lent + more, lent) == lent)
            {
                if (Interlocked.Add(ref _free, more) >= _refillAt)
                {
                    WakeFeeder();
                }

                return;
            }
        }
    }

    /// <summary>The longest wait between two tries of an outcome's write (five tries after the first, ~31 s in all).</summary>
    private static readonly TimeSpan MaxCompletionRetryDelay = TimeSpan.FromSeconds(16);

    private async Task RunSlotAsync(int slot)
    {
        var signal = new Scheduling.ReusableSignal();
        QueuedJob? ran = null;
        while (true)
        {
            if (_stopping)
            {
                if (ran is not null)
                {
                    _scheduler.Release(ran);
                    FreeRoom();
                }

                _tokens[slot]?.Dispose();
                _tokens[slot] = null;
                return;
            }

            // Whatever the outcome of the job it ran (success, failure, retry, cancellation, timeout), the slot gives
            // back its limits here, in the same lock round as it takes the next one.
            var taken = _scheduler.TakeOrWait(ran, signal, out var item, out var wait);
            if (ran is not null)
            {
                FreeRoom();
                ran = null;
            }

            if (!taken)
            {
                if (_scheduler.HoldsJobs)
                {
                    LendRoom();
                }

                await wait.ConfigureAwait(false);
                continue;
            }

            ran = item;
            _telemetry.Waited(item, Time.GetUtcNow());
            try
            {
                await RunJobAsync(item, slot).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                Log.SlotFailed(_logger, item.Id, e);
            }

            if (_stillRunning[slot] is { } code)
            {
                // Abandoned while its code still runs: the slot takes other jobs, but this job's concurrency limits
                // (workload, tenant, key) stay taken until that code returns, so that a key limit of 1 never has two
                // attempts running at once. A workload that never returns keeps them until the host stops.
                _stillRunning[slot] = null;
                ran = null;
                FreeRoom();
                _ = code.ContinueWith(
                    static (_, state) =>
                    {
                        var (scheduler, job) = ((Scheduling.JobScheduler, QueuedJob))state!;
                        scheduler.Release(job);
                    },
                    (_scheduler, item),
                    CancellationToken.None,
                    TaskContinuationOptions.ExecuteSynchronously,
                    TaskScheduler.Default);
            }
        }
    }

    private async Task RunJobAsync(QueuedJob item, int slot)
    {
        // A second delivery of a job this worker runs needs no check here: its lease is refused (the job is Running),
        // and the delivery is acknowledged below.
        // The slot's cancellation source, reused from its last attempt when that one finished without a stop.
        var attempt = new ActiveAttempt(item, this, _tokens[slot]);
        _tokens[slot] = null;
        Volatile.Write(ref _active[slot], attempt);
        try
        {
            if (_stopping)
            {
                // The shutdown sweep may have run before this attempt was registered: do not start it.
                await _queue.ReturnAsync([item], CancellationToken.None).ConfigureAwait(false);
                return;
            }

            var leased = await Store.TryAcquireLeaseAsync(item.Id, WorkerId, _options.LeaseDuration, CancellationToken.None).ConfigureAwait(false);
            if (leased is null)
            {
                // It does not start: the rate tokens it took go back (its concurrency limits go back as for any job,
                // when the slot takes its next one).
                _scheduler.Refund(item);

                // Cancelled, finished or taken by another worker while it waited in the queue, or not due yet (the
                // queue's and the store's clocks disagree): in that last case it goes back to the queue. Acknowledged
                // last: if the look or the enqueue fails, the delivery comes back instead of the job being lost.
                if (await Store.GetAsync(item.Id, CancellationToken.None).ConfigureAwait(false) is { State: JobState.Scheduled } waiting)
                {
                    await _queue.EnqueueAsync(QueuedJob.For(waiting, Time.GetUtcNow()), CancellationToken.None).ConfigureAwait(false);
                }

                await AcknowledgeAsync(item, slot).ConfigureAwait(false);
                return;
            }

            attempt.Grant(leased);
            if (leased.CancelRequested)
            {
                attempt.TryStop(StopReason.Cancelled, leased.CancelReason, _options.CancellationGracePeriod);
            }

            AttemptCompletion? completion;
            try
            {
                completion = await ExecuteAttemptAsync(attempt, leased).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // A fault of JobRunner itself or of a user classifier or retry strategy: fail the job rather than leave
                // it Running until its lease expires (and loop).
                Log.SlotFailed(_logger, item.Id, e);
                completion = new AttemptCompletion
                {
                    Outcome = AttemptOutcome.Failed,
                    NextState = JobState.Failed,
                    Error = "JobRunner could not run or classify the attempt: " + e.Message,
                    ErrorType = e.GetType().FullName,
                };
            }

            if (completion is null)
            {
                await AcknowledgeAsync(item, slot).ConfigureAwait(false);
                Log.LeaseLost(_logger, item.Id, leased.Lease.FenceToken);
                return;
            }

            JobState next;
            try
            {
                next = await CompleteAsync(leased.Lease, completion).ConfigureAwait(false);
            }
            catch (Exception e) when (e is StaleFenceTokenException or JobNotFoundException)
            {
                await AcknowledgeAsync(item, slot).ConfigureAwait(false);
                Log.CompletionRejected(_logger, item.Id, e);
                return;
            }

            if (next is JobState.Queued or JobState.Scheduled)
            {
                // A Scheduled job is due at the completion's time (the store's rule: none means now). If this enqueue
                // fails, the delivery below is not acknowledged: it comes back when its visibility lapses, and the
                // store, which says Queued or Scheduled, lets it run.
                var dueAt = next == JobState.Scheduled ? completion.DueAt : null;
                await _queue.EnqueueAsync(QueuedJob.For(item.Id, leased.Request, Time.GetUtcNow(), dueAt), CancellationToken.None).ConfigureAwait(false);
            }

            // Last, once the outcome is written and the next delivery (if any) is queued.
            await AcknowledgeAsync(item, slot).ConfigureAwait(false);
        }
        finally
        {
            Volatile.Write(ref _active[slot], null);
            if (attempt.StillRunning is { IsCompleted: false } code)
            {
                _stillRunning[slot] = code;
                Log.AbandonedStillRunning(_logger, item.Id, attempt.Reason.ToString());
            }

            _tokens[slot] = attempt.Close();
        }
    }

    /// <summary>
    /// Acknowledges a delivery whose outcome is settled. A failure is only logged: the queue delivers the job again,
    /// and the store refuses to run it twice.
    /// </summary>
    private async ValueTask AcknowledgeAsync(QueuedJob item, int slot)
    {
        var one = _acknowledgements[slot];
        one[0] = item;
        try
        {
            await _queue.AcknowledgeAsync(one, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Log.AcknowledgeFailed(_logger, item.Id, e);
        }
        finally
        {
            one[0] = null!;
        }
    }

    /// <summary>
    /// Writes the attempt's outcome, retrying a failed write (the store unreachable for longer than its own retries
    /// cover, e.g. a database failover) at 1, 2, 4, 8 and 16 seconds. The attempt stays registered meanwhile, so the
    /// heartbeat keeps its lease: a finished job is not taken back and run again because its outcome was late.
    /// </summary>
    private async ValueTask<JobState> CompleteAsync(JobLease lease, AttemptCompletion completion)
    {
        for (var delay = TimeSpan.FromSeconds(1); ; delay *= 2)
        {
            try
            {
                return await Store.CompleteAttemptAsync(lease, completion, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not (StaleFenceTokenException or JobNotFoundException or ArgumentException) && delay <= MaxCompletionRetryDelay)
            {
                Log.CompletionFailed(_logger, lease.JobId, delay, e);
                await Task.Delay(delay, Time).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Runs the attempt and decides its outcome; <see langword="null"/> when the lease was lost.</summary>
    private async ValueTask<AttemptCompletion?> ExecuteAttemptAsync(ActiveAttempt attempt, LeasedJob leased)
    {
        var workload = _registry.Find(leased.Request.Workload);
        if (workload is null)
        {
            attempt.Finish();
            return new AttemptCompletion
            {
                Outcome = AttemptOutcome.Failed,
                NextState = JobState.Failed,
                Error = $"Workload '{leased.Request.Workload}' is not registered on worker '{WorkerId}'. Register it with AddWorkload on every worker host.",
            };
        }

        if ((leased.Request.Timeout ?? workload.Timeout) is { } timeout)
        {
            attempt.ArmTimeout(timeout, _options.CancellationGracePeriod);
        }

        var tenant = leased.Request.Tenant;
        using var activity = _telemetry.ActivitySource.StartActivity("jobrunner.attempt", ActivityKind.Internal);
        if (activity is not null)
        {
            activity.SetTag("jobrunner.job.id", leased.Lease.JobId.ToString());
            activity.SetTag("jobrunner.workload", workload.Name);
            activity.SetTag("jobrunner.tenant", tenant);
            activity.SetTag("jobrunner.attempt", leased.Lease.Attempt);
            activity.SetTag("jobrunner.correlation_id", leased.Request.CorrelationId);
        }

        _telemetry.Started(tenant, workload.Name);
        var started = Time.GetTimestamp();
        Exception? error = null;
        try
        {
            attempt.Begin(await Checkpoints.LoadAsync(leased, attempt.Token).ConfigureAwait(false));

            // Stopped before it began (cancelled as its lease was granted, or the worker stopping): the workload's code
            // does not run at all.
            if (attempt.Reason == StopReason.None)
            {
                var execution = workload.Engine.ExecuteAsync(attempt, attempt.Token);
                if (execution.IsCompletedSuccessfully)
                {
                    attempt.Finish();
                }
                else
                {
                    var task = execution.AsTask();
                    _ = task.ContinueWith(static (_, a) => ((ActiveAttempt)a!).Finish(), attempt, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
                    if (await Task.WhenAny(task, attempt.Abandoned).ConfigureAwait(false) == task)
                    {
                        await task.ConfigureAwait(false);
                    }
                    else
                    {
                        // Abandoned after the grace period: let it run out, observing its failure. Its slot moves on,
                        // but its limits stay taken until it returns (see RunSlotAsync).
                        _ = task.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                        attempt.StillRunning = task;
                    }
                }
            }
        }
        catch (Exception e)
        {
            error = e;
        }

        var reason = attempt.Finish();
        if (reason == StopReason.None && error is OperationCanceledException && _checkpointRequested.IsCancellationRequested)
        {
            // The workload honoured CheckpointRequested and stopped: a release, not a failure.
            reason = StopReason.Shutdown;
        }

        AttemptCompletion? completion = null;
        var decided = false;
        try
        {
            completion = Decide(leased, workload, attempt, reason, error);
            decided = true;
        }
        finally
        {
            // Recorded even when a user classifier or retry strategy throws in Decide (the caller then fails the job):
            // otherwise jobrunner.attempts.active would keep this attempt for good.
            _telemetry.Completed(tenant, workload.Name, decided ? completion?.Outcome ?? AttemptOutcome.LeaseExpired : AttemptOutcome.Failed, Time.GetElapsedTime(started));
        }

        if (completion is not null && (attempt.ExitCode ?? (error as WorkloadExitException)?.ExitCode) is { } exitCode)
        {
            completion = completion with { ExitCode = exitCode };
        }

        if (activity is not null && completion is { Outcome: not AttemptOutcome.Succeeded })
        {
            activity.SetStatus(ActivityStatusCode.Error, completion.Error);
        }

        return completion;
    }

    private AttemptCompletion? Decide(LeasedJob job, RegisteredWorkload workload, ActiveAttempt attempt, StopReason reason, Exception? error)
    {
        switch (reason)
        {
            case StopReason.LeaseLost:
                return null;
            case StopReason.Cancelled:
                return new AttemptCompletion
                {
                    Outcome = AttemptOutcome.Cancelled,
                    NextState = JobState.Cancelled,
                    Error = attempt.Message is null ? "Cancelled." : "Cancelled: " + attempt.Message,
                };
            case StopReason.Shutdown:
                return new AttemptCompletion
                {
                    Outcome = AttemptOutcome.Interrupted,
                    NextState = JobState.Queued,
                    Error = $"Worker '{WorkerId}' shut down; the job resumes from its last checkpoint.",
                };
            case StopReason.TimedOut:
                return Fail(job, workload, new JobTimeoutException(job.Lease.JobId, (job.Request.Timeout ?? workload.Timeout)!.Value), AttemptOutcome.TimedOut);
            case StopReason.None when error is null:
                return s_succeeded;
            default:
                return Fail(job, workload, error!, error is JobTimeoutException ? AttemptOutcome.TimedOut : AttemptOutcome.Failed);
        }
    }

    private AttemptCompletion Fail(LeasedJob job, RegisteredWorkload workload, Exception error, AttemptOutcome outcome)
    {
        var kind = workload.Classifier.Classify(error);
        TimeSpan? delay = null;
        if (kind == FailureKind.Transient)
        {
            delay = (job.Request.Retry ?? workload.Retry).GetRetryDelay(job.FailedAttempts + 1, error);
        }

        var now = Time.GetUtcNow();
        return new AttemptCompletion
        {
            Outcome = outcome,
            NextState = delay switch
            {
                null => JobState.Failed,
                { } wait when wait > TimeSpan.Zero => JobState.Scheduled,
                _ => JobState.Queued,
            },
            DueAt = delay is { } d ? (d < DateTimeOffset.MaxValue - now ? now + d : DateTimeOffset.MaxValue) : null,
            Error = error.Message,
            ErrorType = error.GetType().FullName,
        };
    }

    private async Task ShutDownAsync(Task[] slots)
    {
        _stopping = true;
        _scheduler.Close();
        var held = _scheduler.RemoveAll();
        if (held.Count > 0)
        {
            try
            {
                await _queue.ReturnAsync(held, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // Their visibility lapses instead; the running attempts still get their checkpoint request and grace.
                Log.ReturnFailed(_logger, held.Count, e);
            }
        }

        var running = ActiveCount;
        if (running > 0)
        {
            Log.ShuttingDown(_logger, WorkerId, running, _options.ShutdownGracePeriod);
        }

        // Not awaited: the callbacks are the workloads' (a blocking or throwing one must not stop the shutdown).
        var requested = Task.Run(_checkpointRequested.Cancel, CancellationToken.None);
        _ = requested.ContinueWith(static (t, state) => Log.CheckpointRequestFailed((ILogger)state!, t.Exception!), _logger, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        var all = Task.WhenAll(slots);
        if (_options.ShutdownGracePeriod > TimeSpan.Zero)
        {
            using var grace = new CancellationTokenSource(_options.ShutdownGracePeriod, Time);
            await all.WaitAsync(grace.Token).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        foreach (var attempt in Active())
        {
            attempt.TryStop(StopReason.Shutdown, null, TimeSpan.Zero);
        }

        await all.ConfigureAwait(false);
    }

    private async Task ListenForCancellationAsync(IAsyncEnumerator<JobEvent> cancellations, Task<bool> first)
    {
        while (true)
        {
            await using (cancellations.ConfigureAwait(false))
            {
                try
                {
                    for (var more = await first.ConfigureAwait(false); more; more = await cancellations.MoveNextAsync().ConfigureAwait(false))
                    {
                        var request = cancellations.Current;
                        if (request.State == JobState.Cancelled)
                        {
                            // Cancelled before it ran (the store says Cancelled, not Running): a delivery held here goes
                            // now, not when its turn comes. No attempt is stopped: one a slot took meanwhile finds its
                            // lease refused, unless the job was retried since, and then it is the retry's to run.
                            try
                            {
                                await DropCancelledAsync(request).ConfigureAwait(false);
                            }
                            catch (Exception e) when (e is not OperationCanceledException)
                            {
                                Log.SlotFailed(_logger, request.JobId, e);
                            }

                            continue;
                        }

                        Stop(request.JobId, request.Attempt, request.Message);
                    }

                    return;
                }
                catch (OperationCanceledException) when (_background.IsCancellationRequested)
                {
                    return;
                }
                catch (JobEventsDroppedException e)
                {
                    Log.CancellationsDropped(_logger, e.Dropped);
                }
            }

            // Listen again first, then read the running jobs: a cancellation requested in the gap is in the store.
            cancellations = SubscribeToCancellations();
            first = cancellations.MoveNextAsync().AsTask();
            try
            {
                await StopCancelledAsync().ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_background.IsCancellationRequested)
            {
            }
        }
    }

    /// <summary>
    /// Drops the deliveries of a job cancelled before it ran: the one waiting in the scheduler (its tenant's turn is not
    /// spent, its lookahead room is freed, and the gauges and explanations no longer count it) is acknowledged, and the
    /// in-memory queue's delayed one (a job scheduled far ahead) is removed. Only cancellations pay for this (one
    /// scheduler lock round and one store read); the take path does not look for cancelled jobs. A job retried since
    /// (Queued or Scheduled again) keeps them: they are given back to the queue instead.
    /// </summary>
    private async Task DropCancelledAsync(JobEvent request)
    {
        var id = request.JobId;
        var held = _scheduler.TryRemove(id, out var job, out var pending) ? job : null;
        // Only a Scheduled job (waiting for its not-before time or a retry back-off) has a delayed delivery: a queued one's
        // cancellation does not pay for the scan.
        var delayed = request.PreviousState != JobState.Queued ? (_queue as InMemory.InMemoryJobQueue)?.RemoveDelayed(id) : null;
        if (held is null && delayed is null)
        {
            // Not here (taken by a slot, whose lease is refused; or held by another worker).
            return;
        }

        if (pending)
        {
            FreeRoom();
        }

        bool live;
        try
        {
            live = await Store.GetAsync(id, CancellationToken.None).ConfigureAwait(false) is { State: JobState.Queued or JobState.Scheduled };
        }
        catch (Exception e)
        {
            // Cannot tell: give them back, as before this shortcut (a worker that takes the job finds its lease refused).
            Log.DropCancelledFailed(_logger, id, e);
            live = true;
        }

        try
        {
            if (held is not null)
            {
                if (live)
                {
                    await _queue.ReturnAsync([held], CancellationToken.None).ConfigureAwait(false);
                }
                else
                {
                    await _queue.AcknowledgeAsync([held], CancellationToken.None).ConfigureAwait(false);
                }
            }

            if (live)
            {
                foreach (var entry in delayed ?? [])
                {
                    await _queue.EnqueueAsync(entry, CancellationToken.None).ConfigureAwait(false);
                }
            }
            else
            {
                Log.DroppedCancelled(_logger, id, request.Message);
            }
        }
        catch (Exception e)
        {
            // Not acknowledged: its visibility lapses (nothing extends it now), and the store refuses to run it.
            Log.DropCancelledFailed(_logger, id, e);
        }
    }

    private IAsyncEnumerator<JobEvent> SubscribeToCancellations() => _events.SubscribeAsync(
        new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.CancellationRequested } },
        _background.Token).GetAsyncEnumerator(_background.Token);

    /// <summary>Stops the running attempt of <paramref name="jobId"/> whose cancellation was requested.</summary>
    private void Stop(JobId jobId, int attempt, string? reason)
    {
        try
        {
            foreach (var active in Active())
            {
                // The attempt the request was for (a job retried by request runs again): one still waiting for its
                // lease is stopped too, as the lease would report the cancellation anyway.
                if (active.Item.Id == jobId
                    && (active.Lease is not { } lease || lease.Attempt == attempt)
                    && active.TryStop(StopReason.Cancelled, reason, _options.CancellationGracePeriod))
                {
                    Log.CancellingAttempt(_logger, jobId, reason);
                }
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            Log.SlotFailed(_logger, jobId, e);
        }
    }

    /// <summary>
    /// Stops the running attempts whose jobs the store says are to be cancelled: after the listener fell behind and
    /// cancellation requests were dropped.
    /// </summary>
    private async Task StopCancelledAsync()
    {
        foreach (var active in Active())
        {
            var id = active.Item.Id;
            JobRecord? job;
            try
            {
                job = await Store.GetAsync(id, _background.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                Log.SlotFailed(_logger, id, e);
                continue;
            }

            if (job is { CancelRequested: true })
            {
                Stop(id, job.Attempts.Count, job.CancelReason);
            }
        }
    }

    private async Task HeartbeatAsync(PeriodicTimer timer, CancellationToken cancellationToken)
    {
        using var _ = timer;
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                // Taken first, so that the jobs given back are not extended below; given back after the renewal, on
                // their own, so that their store look-ups (one per job) and the queue's errors never delay a lease.
                var parked = _giveBack.IsCompleted ? _scheduler.TakeParked() : [];
                try
                {
                    var leases = new List<JobLease>();
                    var items = _scheduler.Snapshot();
                    foreach (var attempt in Active())
                    {
                        if (attempt.Lease is { } lease)
                        {
                            leases.Add(lease);
                            items.Add(attempt.Item);
                        }
                    }

                    var lost = leases.Count == 0 ? [] : await Store.RenewLeasesAsync(leases, _options.LeaseDuration, cancellationToken).ConfigureAwait(false);
                    foreach (var id in lost)
                    {
                        // The store names the job, not the lease. Two attempts of one job here (the job was reclaimed
                        // from the first and leased again by another slot) sent two leases, and only the older can be
                        // the lost one: the newest is stopped only when it was sent alone (a later heartbeat sends it
                        // alone if it too is lost).
                        var newest = long.MinValue;
                        var sent = 0;
                        foreach (var lease in leases)
                        {
                            if (lease.JobId == id)
                            {
                                newest = Math.Max(newest, lease.FenceToken);
                                sent++;
                            }
                        }

                        foreach (var attempt in Active())
                        {
                            if (attempt.Item.Id == id && attempt.Lease is { } lease && leases.Contains(lease)
                                && (sent == 1 || lease.FenceToken < newest)
                                && attempt.TryStop(StopReason.LeaseLost, null, TimeSpan.Zero))
                            {
                                Log.LeaseLost(_logger, id, lease.FenceToken);
                            }
                        }
                    }

                    if (items.Count > 0)
                    {
                        // Held jobs (running or waiting in the scheduler) stay invisible to other workers.
                        await _queue.ExtendAsync(items, _options.LeaseDuration, cancellationToken).ConfigureAwait(false);
                    }
                }
                catch (Exception e) when (!cancellationToken.IsCancellationRequested)
                {
                    Log.HeartbeatFailed(_logger, e);
                }
                finally
                {
                    // Also when the worker stops during this tick: these jobs are no longer in the scheduler, so the
                    // shutdown's return of held jobs does not see them.
                    if (parked.Count > 0)
                    {
                        _giveBack = GiveBackParkedAsync(parked, cancellationToken);
                    }
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }

        await _giveBack.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
    }

    /// <summary>
    /// Gives the parked jobs (this worker may not run them) back to the queue, so that a capable worker can take them;
    /// jobs that finished or were cancelled meanwhile are acknowledged instead, so they do not circle forever.
    /// </summary>
    private async Task GiveBackParkedAsync(List<QueuedJob> parked, CancellationToken cancellationToken)
    {
        await Task.Yield();
        List<QueuedJob>? gone = null;
        try
        {
            for (var i = parked.Count - 1; i >= 0; i--)
            {
                // A due job that waited for a retry or its not-before time is still Scheduled in the store until leased.
                if (await Store.GetAsync(parked[i].Id, cancellationToken).ConfigureAwait(false) is not { State: JobState.Queued or JobState.Scheduled })
                {
                    (gone ??= []).Add(parked[i]);
                    parked.RemoveAt(i);
                }
            }
        }
        catch (Exception e)
        {
            // The store is unreachable, or the worker stops: give the rest back unchecked; a worker that leases one finds
            // out.
            if (!cancellationToken.IsCancellationRequested)
            {
                Log.HeartbeatFailed(_logger, e);
            }
        }

        try
        {
            if (gone is not null)
            {
                await _queue.AcknowledgeAsync(gone, CancellationToken.None).ConfigureAwait(false);
            }

            await _queue.ReturnAsync(parked, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e)
        {
            // Not returned: their visibility lapses (nothing extends it now), and a capable worker takes them then.
            Log.HeartbeatFailed(_logger, e);
        }
    }

    private async Task ReclaimAsync(PeriodicTimer timer, CancellationToken cancellationToken)
    {
        using var _ = timer;
        try
        {
            while (await timer.WaitForNextTickAsync(cancellationToken).ConfigureAwait(false))
            {
                try
                {
                    await ReclaimOnceAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception e) when (!cancellationToken.IsCancellationRequested)
                {
                    Log.ReclaimFailed(_logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
        }
    }

    internal async Task ReclaimOnceAsync(CancellationToken cancellationToken)
    {
        var reclaimed = await Store.ReclaimExpiredLeasesAsync(cancellationToken).ConfigureAwait(false);
        var now = Time.GetUtcNow();
        foreach (var job in reclaimed)
        {
            // The store already made them Queued: each is enqueued whatever the others do and whether or not the
            // worker is stopping, or it would wait in no queue.
            Log.Reclaimed(_logger, job.Id);
            await RequeueReclaimedAsync(QueuedJob.For(job, now)).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Enqueues a reclaimed job, retrying with the completion write's back-off (1, 2, 4, ... 16 s): its old delivery may
    /// be gone (the attempt that lost the lease acknowledged it), and with a queue that keeps its own messages (SQS) a
    /// Queued job without one would wait forever.
    /// </summary>
    private async Task RequeueReclaimedAsync(QueuedJob job)
    {
        for (var delay = TimeSpan.FromSeconds(1); ; delay *= 2)
        {
            try
            {
                await _queue.EnqueueAsync(job, CancellationToken.None).ConfigureAwait(false);
                return;
            }
            catch (Exception e) when (delay <= MaxCompletionRetryDelay)
            {
                Log.RequeueRetrying(_logger, job.Id, delay, e);
                await Task.Delay(delay, Time).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                Log.RequeueFailed(_logger, job.Id, e);
                return;
            }
        }
    }

    private async Task DelayQuietlyAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(delay, Time, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
