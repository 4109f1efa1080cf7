using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Configuration;

public sealed class OptionsValidationTests
{
    private static async Task<OptionsValidationException> StartInvalidAsync(Action<JobRunnerBuilder> configure)
    {
        await using var host = new TestHost(configure);
        return await Assert.ThrowsAsync<OptionsValidationException>(host.StartAsync);
    }

    [Fact]
    public void WorkerOptions_Ctor_Defaults()
    {
        var options = new WorkerOptions();

        Assert.True(options.Enabled);
        Assert.Equal(Environment.ProcessorCount, options.Slots);
        Assert.Equal(TimeSpan.FromSeconds(30), options.LeaseDuration);
        Assert.Equal(TimeSpan.FromSeconds(10), options.HeartbeatInterval);
        Assert.Equal(TimeSpan.FromSeconds(5), options.ReclaimInterval);
        Assert.Equal(TimeSpan.FromSeconds(10), options.CancellationGracePeriod);
        Assert.Equal(TimeSpan.FromSeconds(10), options.ShutdownGracePeriod);
        Assert.StartsWith(Environment.MachineName, options.WorkerId, StringComparison.Ordinal);
        Assert.Empty(options.Labels);
    }

    [Fact]
    public async Task Start_BadWorkerLabels_NameTheFix()
    {
        var e = await StartInvalidAsync(r => r.ConfigureWorker(w =>
        {
            w.Labels["g pu"] = "true";
            w.Labels["zone"] = "e u";
        }));

        Assert.Equal(2, e.Failures.Count());
        Assert.Contains("WorkerOptions.Labels has the key 'g pu', which is not valid: use an optional DNS prefix", e.Message, StringComparison.Ordinal);
        Assert.Contains("WorkerOptions.Labels['zone'] is 'e u', which is not valid: use an empty value or a name", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void JobRunnerOptions_Ctor_Defaults()
    {
        var options = new JobRunnerOptions();

        var retry = Assert.IsType<RetryPolicy>(options.DefaultRetry);
        Assert.Equal((BackoffKind.Exponential, 5, TimeSpan.FromSeconds(1), true), (retry.Backoff, retry.MaxAttempts, retry.BaseDelay, retry.UseJitter));
        Assert.Null(options.DefaultTimeout);
        Assert.Same(System.Text.Json.JsonSerializerOptions.Web, options.SerializerOptions);
    }

    [Fact]
    public async Task Start_ZeroSlots_NamesTheFix()
    {
        var e = await StartInvalidAsync(r => r.ConfigureWorker(w => w.Slots = 0));

        Assert.Contains("WorkerOptions.Slots is 0. Set it to 1 or more", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_HeartbeatNotBelowHalfTheLease_NamesTheFix()
    {
        var e = await StartInvalidAsync(r => r.ConfigureWorker(w =>
        {
            w.LeaseDuration = TimeSpan.FromSeconds(30);
            w.HeartbeatInterval = TimeSpan.FromSeconds(20);
        }));

        Assert.Contains("at most half the lease duration", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_ManyBadOptions_ReportsEveryOne()
    {
        var e = await StartInvalidAsync(r => r.ConfigureWorker(w =>
        {
            w.Slots = -1;
            w.WorkerId = " ";
            w.ReclaimInterval = TimeSpan.Zero;
            w.CancellationGracePeriod = TimeSpan.FromSeconds(-1);
        }));

        Assert.Equal(4, e.Failures.Count());
    }

    [Fact]
    public async Task Start_TimesBeyondWhatATimerTakes_AreRefusedNamingTheLimit()
    {
        var e = await StartInvalidAsync(r => r.ConfigureWorker(w =>
        {
            w.LeaseDuration = TimeSpan.MaxValue;
            w.HeartbeatInterval = TimeSpan.FromSeconds(10);
            w.ReclaimInterval = TimeSpan.FromDays(60);
            w.CancellationGracePeriod = TimeSpan.MaxValue;
            w.ShutdownGracePeriod = TimeSpan.FromDays(50);
        }));

        Assert.Equal(4, e.Failures.Count());
        Assert.All(e.Failures, f => Assert.Contains("at most 49.7 days", f, StringComparison.Ordinal));
    }

    [Fact]
    public async Task Start_DuplicateWorkloadName_NamesTheFix()
    {
        var e = await StartInvalidAsync(r => r.AddWorkload<DelegateWorkload>("work"));

        Assert.Contains("Workload 'work' is registered more than once", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_InvalidWorkloadName_NamesTheRule()
    {
        var e = await StartInvalidAsync(r => r.AddWorkload<DelegateWorkload>("resize images"));

        Assert.Contains("Workload name 'resize images' is not valid: use 1–63 letters", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_NonPositiveWorkloadTimeout_NamesTheFix()
    {
        var e = await StartInvalidAsync(r => r.AddWorkload<DelegateWorkload>("slow", w => w.Timeout = TimeSpan.Zero));

        Assert.Contains("Workload 'slow': Timeout is 00:00:00", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_BadDefaults_NameTheFix()
    {
        var e = await StartInvalidAsync(r => r.ConfigureDefaults(d =>
        {
            d.DefaultRetry = null!;
            d.DefaultTimeout = TimeSpan.FromSeconds(-1);
        }));

        Assert.Equal(2, e.Failures.Count());
    }

    [Fact]
    public async Task Start_BadInMemoryBounds_NameTheFix()
    {
        var e = await StartInvalidAsync(r => r.UseInMemory(m => m.MaxLogLinesPerJob = 0));

        Assert.Contains("MaxLogLinesPerJob is 0", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_InvalidContainerSpec_NamesTheWorkloadAndEveryProblem()
    {
        var spec = new ContainerSpec { Image = "", Command = ["/bin/true"], Resources = new ContainerResources { CpuMillicores = 100 } };

        var e = await StartInvalidAsync(r => r.AddContainerWorkload("box", spec));

        Assert.Contains("Workload 'box': Image is empty", e.Message, StringComparison.Ordinal);
        Assert.Contains("Workload 'box': Resources.CpuMillicores is 100", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_ExitCodeInBothSets_NamesTheFix()
    {
        var e = await StartInvalidAsync(r => r.ConfigureProcessEngine(p =>
        {
            p.PermanentExitCodes.Add(143);
            p.KillGracePeriod = TimeSpan.FromSeconds(-1);
        }));

        Assert.Contains("Exit code 143 is in both", e.Message, StringComparison.Ordinal);
        Assert.Contains("KillGracePeriod", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ProcessEngineOptions_Ctor_Defaults()
    {
        var options = new ProcessEngineOptions();

        Assert.Equal(TimeSpan.FromSeconds(10), options.KillGracePeriod);
        Assert.Equal([137, 143], options.TransientExitCodes.Order());
        Assert.Equal([126, 127], options.PermanentExitCodes.Order());
        Assert.Equal(FailureKind.Permanent, options.DefaultExitCodeKind);
        Assert.False(options.InheritEnvironment);
        Assert.True(options.UseProcessGroups);
        Assert.Null(options.DefaultWorkingDirectory);
    }

    [Fact]
    public void AddJobRunner_NullArguments_Throw()
    {
        var services = new ServiceCollection();

        Assert.Throws<ArgumentNullException>(() => services.AddJobRunner(null!));
        Assert.Throws<ArgumentNullException>(() => ((IServiceCollection)null!).AddJobRunner(_ => { }));
        services.AddJobRunner(r =>
        {
            Assert.Throws<ArgumentNullException>(() => r.AddWorkload<DelegateWorkload>(null!));
            Assert.Throws<ArgumentNullException>(() => r.UseStore(null!));
        });
    }

    [Fact]
    public async Task Start_WorkerDisabled_RunsNothingButAcceptsSubmits()
    {
        await using var host = await new TestHost(r => r.ConfigureWorker(w => w.Enabled = false)).StartAsync();

        var id = await host.SubmitAsync(new JobRequest("work"));

        Assert.Equal(JobState.Queued, (await host.Client.GetAsync(id))!.State);
        Assert.Empty(host.Behavior.Started);
    }
}
