using JobRunner.InMemory;
using JobRunner.Testing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace JobRunner.Tests.Support;

/// <summary>What the delegate workloads of one test do; a singleton per host.</summary>
public sealed class Behavior
{
    public Func<WorkloadContext, CancellationToken, ValueTask> Run { get; set; } = static (_, _) => ValueTask.CompletedTask;

    /// <summary>Every attempt that entered the workload, in order: (job, attempt, checkpoint at start).</summary>
    public List<(JobId Job, int Attempt, string? Checkpoint)> Started { get; } = [];

    public TaskCompletionSource FirstStart { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
}

/// <summary>A workload that does what the test's <see cref="Behavior"/> says.</summary>
public sealed class DelegateWorkload(Behavior behavior) : IWorkload
{
    public ValueTask ExecuteAsync(WorkloadContext context, CancellationToken cancellationToken)
    {
        lock (behavior.Started)
        {
            var checkpoint = context.Checkpoint is { } c ? System.Text.Encoding.UTF8.GetString(c.Span) : null;
            behavior.Started.Add((context.JobId, context.Attempt, checkpoint));
        }

        behavior.FirstStart.TrySetResult();
        return behavior.Run(context, cancellationToken);
    }
}

public sealed record Order(string Item, int Quantity);

/// <summary>A typed workload: requires an input.</summary>
public sealed class OrderWorkload(Behavior behavior) : Workload<Order>
{
    protected override ValueTask ExecuteAsync(Order input, WorkloadContext context, CancellationToken cancellationToken)
        => behavior.Run(context, cancellationToken);
}

/// <summary>A host with JobRunner on a fake clock. Tests drive time and wait on events, never on sleeps.</summary>
public sealed class TestHost : IAsyncDisposable
{
    public static readonly TimeSpan WaitLimit = TimeSpan.FromSeconds(30);

    private readonly IHost _host;
    private bool _started;

    public TestHost(Action<JobRunnerBuilder>? configure = null, FakeTimeProvider? time = null, Action<IServiceCollection>? services = null, Behavior? behavior = null)
    {
        Time = time ?? new FakeTimeProvider();
        Behavior = behavior ?? new Behavior();
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddSingleton<TimeProvider>(Time);
        builder.Services.AddSingleton(Behavior);
        services?.Invoke(builder.Services);
        builder.Services.AddJobRunner(runner =>
        {
            runner.ConfigureWorker(w =>
            {
                w.Slots = 2;
                w.ShutdownGracePeriod = TimeSpan.Zero;
                w.CancellationGracePeriod = TimeSpan.Zero;
            });
            runner.ConfigureDefaults(d => d.DefaultRetry = RetryPolicy.Fixed(TimeSpan.FromSeconds(5), maxAttempts: 3));
            runner.AddWorkload<DelegateWorkload>("work");
            runner.AddWorkload<OrderWorkload>("orders");
            configure?.Invoke(runner);
        });
        _host = builder.Build();
    }

    public FakeTimeProvider Time { get; }

    public Behavior Behavior { get; }

    public IServiceProvider Services => _host.Services;

    public IJobClient Client => Services.GetRequiredService<IJobClient>();

    public IJobStore Store => Services.GetRequiredService<IJobStore>();

    public IJobQueue Queue => Services.GetRequiredService<IJobQueue>();

    public async Task<TestHost> StartAsync()
    {
        await _host.StartAsync();
        _started = true;
        return this;
    }

    public Task StopAsync() => _host.StopAsync();

    public async Task<JobId> SubmitAsync(JobRequest request) => (await Client.SubmitAsync(request)).Id;

    /// <summary>Waits (event-driven, bounded by <see cref="WaitLimit"/>) until the job reaches <paramref name="state"/>.</summary>
    /// <summary>Completes when <paramref name="condition"/> holds, checked after every change of the worker's scheduler.</summary>
    internal async Task WaitForSchedulerAsync(Func<JobRunner.Scheduling.JobScheduler, bool> condition)
    {
        var scheduler = Services.GetRequiredService<JobRunner.Scheduling.JobScheduler>();
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        void Check()
        {
            if (condition(scheduler))
            {
                done.TrySetResult();
            }
        }

        scheduler.Changed += Check;
        try
        {
            Check();
            await done.Task.WaitAsync(WaitLimit);
        }
        finally
        {
            scheduler.Changed -= Check;
        }
    }

    public async Task<JobRecord> WaitForStateAsync(JobId id, JobState state)
    {
        using var limit = new CancellationTokenSource(WaitLimit);
        try
        {
            await foreach (var e in Client.WatchAsync(id, limit.Token))
            {
                if (e.Kind == JobEventKind.StateChanged && e.State == state)
                {
                    return (await Client.GetAsync(id))!;
                }
            }
        }
        catch (OperationCanceledException)
        {
        }

        var job = await Client.GetAsync(id);
        throw new TimeoutException($"Job {id} did not reach {state} within {WaitLimit}; it is {job?.State}, attempts: {string.Join(", ", job?.Attempts.Select(a => $"#{a.Number} {a.WorkerId} {a.Outcome}") ?? [])}.");
    }

    public async ValueTask DisposeAsync()
    {
        if (_started)
        {
            await _host.StopAsync();
        }

        _host.Dispose();
    }
}
