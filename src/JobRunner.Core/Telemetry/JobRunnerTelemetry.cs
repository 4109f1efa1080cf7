using System.Diagnostics;
using System.Diagnostics.Metrics;
using JobRunner.InMemory;

namespace JobRunner.Telemetry;

/// <summary>
/// The <c>JobRunner</c> meter and activity source. Instruments: <c>jobrunner.jobs.submitted</c>,
/// <c>jobrunner.jobs.started</c>, <c>jobrunner.jobs.completed</c> (tag <c>outcome</c>), <c>jobrunner.attempt.duration</c>
/// (seconds), <c>jobrunner.attempts.active</c>, <c>jobrunner.queue.wait</c> (seconds from ready to start),
/// <c>jobrunner.scheduler.pending</c> and <c>jobrunner.scheduler.oldest_wait</c> (the jobs the scheduler holds and may run; an emptied group reads 0 once), and
/// <c>jobrunner.queue.depth</c> for the in-memory queue. Every job
/// instrument is tagged with <c>tenant</c> and <c>workload</c>.
/// </summary>
internal sealed class JobRunnerTelemetry : IDisposable
{
    public const string Name = "JobRunner";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly Counter<long> _submitted;
    private readonly Counter<long> _started;
    private readonly Counter<long> _completed;
    private readonly Histogram<double> _duration;
    private readonly UpDownCounter<long> _active;
    private readonly Histogram<double> _wait;

    public JobRunnerTelemetry(IJobQueue queue, Scheduling.JobScheduler scheduler, TimeProvider time, IMeterFactory? meters = null)
    {
        var version = typeof(JobRunnerTelemetry).Assembly.GetName().Version?.ToString();

        // From the host's factory when it has one (the generic host does): two hosts in one process then publish
        // through two meters a listener can tell apart (Meter.Scope), each disposed with its host's container.
        _ownsMeter = meters is null;
        _meter = meters?.Create(new MeterOptions(Name) { Version = version }) ?? new Meter(Name, version);
        ActivitySource = new ActivitySource(Name, version);
        _submitted = _meter.CreateCounter<long>("jobrunner.jobs.submitted", "{job}", "Jobs submitted.");
        _started = _meter.CreateCounter<long>("jobrunner.jobs.started", "{attempt}", "Attempts started.");
        _completed = _meter.CreateCounter<long>("jobrunner.jobs.completed", "{attempt}", "Attempts ended, by outcome.");
        _duration = _meter.CreateHistogram<double>("jobrunner.attempt.duration", "s", "How long attempts ran.");
        _active = _meter.CreateUpDownCounter<long>("jobrunner.attempts.active", "{attempt}", "Attempts running now.");
        _wait = _meter.CreateHistogram<double>("jobrunner.queue.wait", "s", "How long jobs waited from enqueue (or due time) to start.");
        var pending = new HeldGauge(scheduler, time, age: false);
        var oldest = new HeldGauge(scheduler, time, age: true);
        _meter.CreateObservableGauge("jobrunner.scheduler.pending", pending.Observe, "{job}", "Ready jobs held by this worker's scheduler that it may run, by tenant and workload.");
        _meter.CreateObservableGauge("jobrunner.scheduler.oldest_wait", oldest.Observe, "s", "The wait of the oldest ready job held by this worker's scheduler that it may run, by tenant and workload.");
        if (queue is InMemoryJobQueue memory)
        {
            _meter.CreateObservableGauge("jobrunner.queue.depth", () => memory.Depth, "{job}", "Jobs waiting in the in-memory queue (ready, delayed or in flight).");
        }
    }

    public ActivitySource ActivitySource { get; }

    public void Submitted(string tenant, string workload)
    {
        if (_submitted.Enabled)
        {
            _submitted.Add(1, new("tenant", tenant), new("workload", workload));
        }
    }

    public void Started(string tenant, string workload)
    {
        if (_started.Enabled)
        {
            _started.Add(1, new("tenant", tenant), new("workload", workload));
        }

        if (_active.Enabled)
        {
            _active.Add(1, new("tenant", tenant), new("workload", workload));
        }
    }

    public void Completed(string tenant, string workload, AttemptOutcome outcome, TimeSpan duration)
    {
        if (_active.Enabled)
        {
            _active.Add(-1, new("tenant", tenant), new("workload", workload));
        }

        if (_completed.Enabled)
        {
            _completed.Add(1, new("tenant", tenant), new("workload", workload), new("outcome", OutcomeName(outcome)));
        }

        if (_duration.Enabled)
        {
            _duration.Record(duration.TotalSeconds, new("tenant", tenant), new("workload", workload), new("outcome", OutcomeName(outcome)));
        }
    }

    public void Waited(QueuedJob job, DateTimeOffset now)
    {
        if (_wait.Enabled)
        {
            _wait.Record(Math.Max(0, (now - WaitingSince(job)).TotalSeconds), new("tenant", job.Tenant), new("workload", job.Workload));
        }
    }

    /// <summary>Since when a job waits to run: its due time (retry back-off, not-before time), if later than its enqueue.</summary>
    private static DateTimeOffset WaitingSince(QueuedJob job) => job.DueAt is { } due && due > job.EnqueuedAt ? due : job.EnqueuedAt;

    /// <summary>
    /// One of the scheduler's gauges, by tenant and workload, over the jobs this worker holds and may run (parked jobs,
    /// which it gives back to the queue, are left out). A group that emptied since the last observation is reported once
    /// as 0, then forgotten: otherwise exporters would keep showing its last value. (With several listeners collecting,
    /// the 0 goes to the first collection after the group emptied.)
    /// </summary>
    private sealed class HeldGauge(Scheduling.JobScheduler scheduler, TimeProvider time, bool age)
    {
        private readonly Lock _lock = new();
        private HashSet<(string Tenant, string Workload)> _reported = [];

        public List<Measurement<double>> Observe()
        {
            var now = time.GetUtcNow();
            var groups = new Dictionary<(string Tenant, string Workload), double>();
            foreach (var job in scheduler.SnapshotPending())
            {
                var key = (job.Tenant, job.Workload);
                var value = age ? Math.Max(0, (now - WaitingSince(job)).TotalSeconds) : 1;
                groups[key] = groups.TryGetValue(key, out var sofar) ? (age ? Math.Max(sofar, value) : sofar + 1) : value;
            }

            var measurements = new List<Measurement<double>>(groups.Count);
            foreach (var ((tenant, workload), value) in groups)
            {
                measurements.Add(Measure(value, tenant, workload));
            }

            lock (_lock)
            {
                foreach (var (tenant, workload) in _reported)
                {
                    if (!groups.ContainsKey((tenant, workload)))
                    {
                        measurements.Add(Measure(0, tenant, workload));
                    }
                }

                _reported = [.. groups.Keys];
            }

            return measurements;
        }

        private static Measurement<double> Measure(double value, string tenant, string workload)
            => new(value, new KeyValuePair<string, object?>("tenant", tenant), new KeyValuePair<string, object?>("workload", workload));
    }

    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }

        ActivitySource.Dispose();
    }

    private static string OutcomeName(AttemptOutcome outcome) => outcome switch
    {
        AttemptOutcome.Succeeded => "succeeded",
        AttemptOutcome.Failed => "failed",
        AttemptOutcome.TimedOut => "timed_out",
        AttemptOutcome.Cancelled => "cancelled",
        AttemptOutcome.Interrupted => "interrupted",
        _ => "lease_expired",
    };
}
