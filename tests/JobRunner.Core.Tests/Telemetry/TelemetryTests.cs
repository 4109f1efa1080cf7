using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using JobRunner.Events;
using JobRunner.Scheduling;
using JobRunner.Telemetry;
using JobRunner.Testing;
using JobRunner.Tests.Support;
using Microsoft.Extensions.Options;
using NSubstitute;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Telemetry;

public sealed class TelemetryTests
{
    [Fact]
    public async Task Meter_CountsSubmittedStartedAndCompletedByOutcome()
    {
        var tenant = "t" + Guid.NewGuid().ToString("N")[..8];
        var measurements = new ConcurrentQueue<(string Instrument, long Value, string? Outcome)>();
        using var listener = ListenLong(tenant, measurements);

        await using var host = new TestHost();
        host.Behavior.Run = (context, _) => context.Attempt == 1 ? throw new PermanentJobException("no") : ValueTask.CompletedTask;
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work") { Tenant = tenant });
        await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Contains(("jobrunner.jobs.submitted", 1L, (string?)null), measurements);
        Assert.Contains(("jobrunner.jobs.started", 1L, (string?)null), measurements);
        Assert.Contains(("jobrunner.jobs.completed", 1L, "failed"), measurements);
        Assert.Contains(("jobrunner.attempts.active", 1L, (string?)null), measurements);
        Assert.Contains(("jobrunner.attempts.active", -1L, (string?)null), measurements);
    }

    [Fact]
    public async Task Meter_ClassifierThrows_ActiveAttemptIsStillCountedDown()
    {
        var tenant = "t" + Guid.NewGuid().ToString("N")[..8];
        var measurements = new ConcurrentQueue<(string Instrument, long Value, string? Outcome)>();
        using var listener = ListenLong(tenant, measurements);

        await using var host = new TestHost(r => r.AddWorkload<DelegateWorkload>("broken", w => w.Classifier.When(_ => throw new InvalidOperationException("classifier bug"), FailureKind.Permanent)));
        host.Behavior.Run = (_, _) => throw new IOException("boom");
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("broken") { Tenant = tenant });
        await host.WaitForStateAsync(id, JobState.Failed);

        Assert.Equal(0, measurements.Where(m => m.Instrument == "jobrunner.attempts.active").Sum(m => m.Value));
        Assert.Contains(("jobrunner.attempts.active", -1L, (string?)null), measurements);
        Assert.Contains(("jobrunner.jobs.completed", 1L, "failed"), measurements);
    }

    [Fact]
    public void Meter_SchedulerGauges_ReportAnEmptiedGroupAsZeroOnce_AndLeaveParkedJobsOut()
    {
        var tenant = "g" + Guid.NewGuid().ToString("N")[..8];
        var observed = new ConcurrentQueue<(string Instrument, string? Workload, double Value)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "JobRunner" && instrument.Name.StartsWith("jobrunner.scheduler.", StringComparison.Ordinal))
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            string? t = null, workload = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "tenant")
                {
                    t = tag.Value as string;
                }
                else if (tag.Key == "workload")
                {
                    workload = tag.Value as string;
                }
            }

            if (t == tenant)
            {
                observed.Enqueue((instrument.Name, workload, value));
            }
        });

        var time = new FakeTimeProvider();
        var options = Options.Create(new SchedulerOptions());
        using var scheduler = new JobScheduler(options, new TenantWeights(options), time, Options.Create(new WorkerOptions { Slots = 1 }), new JobEventBus());
        using var telemetry = new JobRunnerTelemetry(Substitute.For<IJobQueue>(), scheduler, time);
        listener.Start();
        QueuedJob Job(string workload, string? affinity = null) => new() { Id = JobId.New(time), Priority = 5, Tenant = tenant, Workload = workload, Affinity = affinity, EnqueuedAt = time.GetUtcNow() };
        (string, string?, double)[] Observe()
        {
            observed.Clear();
            listener.RecordObservableInstruments();
            return [.. observed.OrderBy(m => m.Instrument, StringComparer.Ordinal)];
        }

        // A job it may run, and one it may not (a required label this worker lacks: declined, then parked).
        var runnable = Job("w");
        var gpu = Job("gpu", affinity: "gpu");
        Assert.Equal(Admission.Held, scheduler.Add(runnable));
        Assert.Equal(Admission.Declined, scheduler.Add(gpu));
        Assert.Equal(Admission.Parked, scheduler.Add(gpu));
        time.Advance(TimeSpan.FromSeconds(3));

        Assert.Equal([("jobrunner.scheduler.oldest_wait", "w", 3.0), ("jobrunner.scheduler.pending", "w", 1.0)], Observe());

        Assert.True(scheduler.TakeOrWait(null, new ReusableSignal(), out _, out _));
        Assert.Equal([("jobrunner.scheduler.oldest_wait", "w", 0.0), ("jobrunner.scheduler.pending", "w", 0.0)], Observe());
        Assert.Empty(Observe());
    }

    /// <summary>Starts a listener that collects the JobRunner meter's <see langword="long"/> measurements of <paramref name="tenant"/>.</summary>
    private static MeterListener ListenLong(string tenant, ConcurrentQueue<(string Instrument, long Value, string? Outcome)> measurements)
    {
        var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "JobRunner")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string? t = null, outcome = null;
            foreach (var tag in tags)
            {
                if (tag.Key == "tenant")
                {
                    t = tag.Value as string;
                }
                else if (tag.Key == "outcome")
                {
                    outcome = tag.Value as string;
                }
            }

            if (t == tenant)
            {
                measurements.Enqueue((instrument.Name, value, outcome));
            }
        });
        listener.Start();
        return listener;
    }

    /// <summary>Starts a listener that collects <paramref name="instrument"/>'s measurements of <paramref name="tenant"/>.</summary>
    private static MeterListener Listen(string instrument, string tenant, ConcurrentQueue<double> values)
    {
        var listener = new MeterListener();
        listener.InstrumentPublished = (published, l) =>
        {
            if (published.Meter.Name == "JobRunner" && published.Name == instrument)
            {
                l.EnableMeasurementEvents(published);
            }
        };
        listener.SetMeasurementEventCallback<double>((_, value, tags, _) =>
        {
            foreach (var tag in tags)
            {
                if (tag.Key == "tenant" && tag.Value as string == tenant)
                {
                    values.Enqueue(value);
                }
            }
        });
        listener.Start();
        return listener;
    }

    [Fact]
    public async Task Meter_RecordsQueueWaitPerTenant()
    {
        var tenant = "w" + Guid.NewGuid().ToString("N")[..8];
        var waits = new ConcurrentQueue<double>();
        using var listener = Listen("jobrunner.queue.wait", tenant, waits);

        await using var host = new TestHost();
        var id = await host.SubmitAsync(new JobRequest("work") { Tenant = tenant });
        host.Time.Advance(TimeSpan.FromSeconds(7));
        await host.StartAsync();
        await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal([7.0], waits);
    }

    [Fact]
    public async Task Meter_OldestWait_CountsFromTheDueTime_NotFromTheSubmit()
    {
        var tenant = "o" + Guid.NewGuid().ToString("N")[..8];
        var ages = new ConcurrentQueue<double>();
        using var listener = Listen("jobrunner.scheduler.oldest_wait", tenant, ages);

        // One slot, busy: the delayed job, once due, waits in the scheduler.
        await using var host = new TestHost(r => r.ConfigureWorker(w => w.Slots = 1));
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = (context, ct) => context.Request.Tenant == tenant ? ValueTask.CompletedTask : new ValueTask(release.Task.WaitAsync(ct));
        await host.StartAsync();
        var blocker = await host.SubmitAsync(new JobRequest("work"));
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var delayed = await host.SubmitAsync(new JobRequest("work") { Tenant = tenant, NotBefore = host.Time.GetUtcNow().AddMinutes(1) });
        host.Time.Advance(TimeSpan.FromMinutes(1));
        await host.WaitForSchedulerAsync(s => s.PendingCount == 1);
        host.Time.Advance(TimeSpan.FromSeconds(3));

        listener.RecordObservableInstruments();

        Assert.Equal([3.0], ages);
        release.SetResult();
        await host.WaitForStateAsync(delayed, JobState.Succeeded);
        await host.WaitForStateAsync(blocker, JobState.Succeeded);
    }

    [Fact]
    public void Meter_ComesFromTheHostsMeterFactory_WhenItHasOne()
    {
        var services = new ServiceCollection();
        services.AddMetrics();
        services.AddJobRunner(static _ => { });
        using var provider = services.BuildServiceProvider();
        var factory = provider.GetRequiredService<IMeterFactory>();
        var scopes = new ConcurrentQueue<object?>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, _) =>
            {
                if (instrument.Meter.Name == "JobRunner")
                {
                    scopes.Enqueue(instrument.Meter.Scope);
                }
            },
        };
        listener.Start();

        _ = provider.GetRequiredService<JobRunner.Telemetry.JobRunnerTelemetry>();

        Assert.Contains(factory, scopes);
    }

    [Fact]
    public async Task ActivitySource_SpanPerAttempt_CarriesCorrelationId()
    {
        var correlation = Guid.NewGuid().ToString("N");
        var spans = new ConcurrentQueue<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == "JobRunner",
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activity =>
            {
                if (activity.GetTagItem("jobrunner.correlation_id") as string == correlation)
                {
                    spans.Enqueue(activity);
                }
            },
        };
        ActivitySource.AddActivityListener(listener);

        await using var host = new TestHost();
        host.Behavior.Run = (context, _) => context.Attempt == 1 ? throw new IOException("again") : ValueTask.CompletedTask;
        await host.StartAsync();
        var id = await host.SubmitAsync(new JobRequest("work") { CorrelationId = correlation, Retry = RetryPolicy.Fixed(TimeSpan.Zero, 2) });
        await host.WaitForStateAsync(id, JobState.Succeeded);

        Assert.Equal(2, spans.Count);
        Assert.Equal([ActivityStatusCode.Error, ActivityStatusCode.Unset], spans.Select(s => s.Status));
        Assert.All(spans, s => Assert.Equal(id.ToString(), s.GetTagItem("jobrunner.job.id")));
        Assert.Equal([1, 2], spans.Select(s => (int)s.GetTagItem("jobrunner.attempt")!));
    }
}
