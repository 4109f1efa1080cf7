using JobRunner.InMemory;
using JobRunner.Scheduling;
using JobRunner.Tests.Support;
using Microsoft.Extensions.DependencyInjection;

namespace JobRunner.Tests.Scheduling;

/// <summary>Affinity and wait explanations through the worker host, the client and the event stream.</summary>
public sealed class AffinityWorkerTests
{
    private static Task WaitUntilAsync(TestHost host, Func<JobScheduler, bool> condition) => host.WaitForSchedulerAsync(condition);

    private static TestHost Host(int slots, params (string Key, string Value)[] labels) => new(r => r.ConfigureWorker(w =>
    {
        w.Slots = slots;
        foreach (var (key, value) in labels)
        {
            w.Labels[key] = value;
        }
    }));

    [Fact]
    public async Task Submit_MalformedAffinity_TypedErrorQuotingTheTermAndTheFix()
    {
        await using var host = Host(1);

        var e = await Assert.ThrowsAsync<JobValidationException>(() => host.Client.SubmitAsync(new JobRequest("work") { Affinity = "gpu=true, !spot?" }).AsTask());

        var error = Assert.Single(e.Errors);
        Assert.Contains("Affinity term '!spot?' both avoids ('!') and prefers ('?')", error, StringComparison.Ordinal);
        Assert.Contains("write '!spot' to never run on such a worker", error, StringComparison.Ordinal);
        Assert.Empty((await host.Client.ListAsync(new JobQuery())).Items);
    }

    [Fact]
    public async Task IncapableJob_OneWorker_StaysQueued_ExplainedAsNoCapableWorker_WhileCapableJobsRun()
    {
        await using var host = Host(1, ("zone", "eu"));
        await host.StartAsync();

        var gpu = await host.SubmitAsync(new JobRequest("work") { Affinity = "gpu=true", Priority = 10 });
        var plain = await host.SubmitAsync(new JobRequest("work") { Priority = 1 });
        var avoiding = await host.SubmitAsync(new JobRequest("work") { Affinity = "!zone" });
        await host.WaitForStateAsync(plain, JobState.Succeeded);
        await WaitUntilAsync(host, s => s.ParkedCount == 2);

        var explanation = await host.Client.ExplainAsync(gpu);
        Assert.Equal((WaitReason.NoCapableWorker, "gpu=true"), (explanation.Reason, explanation.Limit));
        Assert.Contains("lacks the required label gpu=true", explanation.Message, StringComparison.Ordinal);
        Assert.Equal((WaitReason.NoCapableWorker, "!zone"), ((await host.Client.ExplainAsync(avoiding)).Reason, (await host.Client.ExplainAsync(avoiding)).Limit));
        Assert.Equal(JobState.Queued, (await host.Client.GetAsync(gpu))!.State);
        Assert.Equal([plain], host.Behavior.Started.Select(s => s.Job));

        // A heartbeat gives the parked jobs back to the queue; this lone worker gets them again and parks them again.
        var emptied = false;
        var cycle = WaitUntilAsync(host, s => (emptied |= s.ParkedCount == 0) && s.ParkedCount == 2);
        host.Time.Advance(TimeSpan.FromSeconds(10));
        await cycle;
        Assert.Equal(WaitReason.NoCapableWorker, (await host.Client.ExplainAsync(gpu)).Reason);

        // Cancelled while parked: the next heartbeat acknowledges it instead of handing it round forever.
        await host.Client.CancelAsync(gpu);
        await host.Client.CancelAsync(avoiding);
        host.Time.Advance(TimeSpan.FromSeconds(10));
        await WaitUntilAsync(host, s => s.ParkedCount == 0);
        var queue = host.Services.GetRequiredService<InMemoryJobQueue>();
        Assert.True(SpinWait.SpinUntil(() => queue.Depth == 0, TestHost.WaitLimit), $"queue depth {queue.Depth}");
        Assert.Single(host.Behavior.Started);
    }

    [Fact]
    public async Task IncapableJob_DueAfterItsNotBeforeTime_IsGivenBackNotDropped()
    {
        await using var host = Host(1);
        await host.StartAsync();

        // Due later: the store keeps it Scheduled until a worker leases it, also while it is parked here.
        var gpu = await host.SubmitAsync(new JobRequest("work") { Affinity = "gpu=true", NotBefore = host.Time.GetUtcNow().AddSeconds(5) });
        var parked = WaitUntilAsync(host, s => s.ParkedCount == 1);
        host.Time.Advance(TimeSpan.FromSeconds(6));
        await parked;
        Assert.Equal(JobState.Scheduled, (await host.Client.GetAsync(gpu))!.State);

        // The heartbeat gives it back to the queue (not acknowledged away), and this worker parks it again.
        var emptied = false;
        var cycle = WaitUntilAsync(host, s => (emptied |= s.ParkedCount == 0) && s.ParkedCount == 1);
        host.Time.Advance(TimeSpan.FromSeconds(10));
        await cycle;
        Assert.Empty(host.Behavior.Started);
    }

    [Fact]
    public async Task PreferredJob_WorkerWithoutTheLabel_RunsItAfterThePreferenceWait()
    {
        await using var host = new TestHost(r => r
            .ConfigureWorker(w => w.Labels["zone"] = "us")
            .ConfigureScheduler(s => s.PreferenceWait = TimeSpan.FromSeconds(2)));
        await host.StartAsync();

        var job = await host.SubmitAsync(new JobRequest("work") { Affinity = "zone=eu?" });
        await WaitUntilAsync(host, s => s.PendingCount == 1);

        var explanation = await host.Client.ExplainAsync(job);
        Assert.Equal((WaitReason.PreferredWorker, "zone=eu?"), (explanation.Reason, explanation.Limit));
        Assert.Empty(host.Behavior.Started);
        host.Time.Advance(TimeSpan.FromSeconds(2));
        await host.WaitForStateAsync(job, JobState.Succeeded);
    }

    [Fact]
    public async Task WaitingEvents_IncapableJob_WatcherIsTold_NoCapableWorker()
    {
        await using var host = Host(1);
        await host.StartAsync();
        using var stop = new CancellationTokenSource(TestHost.WaitLimit);
        await using var waiting = host.Client.WatchAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Waiting } }, stop.Token).GetAsyncEnumerator(stop.Token);
        var next = waiting.MoveNextAsync();

        var gpu = await host.SubmitAsync(new JobRequest("work") { Affinity = "gpu" });

        Assert.True(await next);
        var e = waiting.Current;
        Assert.Equal((JobEventKind.Waiting, gpu, JobState.Queued), (e.Kind, e.JobId, e.State));
        Assert.Equal((WaitReason.NoCapableWorker, "gpu"), (e.Explanation!.Reason, e.Explanation.Limit));
        Assert.Equal(e.Explanation.Message, e.Message);
    }

    [Fact]
    public async Task WaitingEvents_PublishedWhenTheReasonChanges_NotPerDecision()
    {
        await using var host = Host(2);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        host.Behavior.Run = async (_, ct) => await gate.Task.WaitAsync(ct);
        await host.StartAsync();
        using var stop = new CancellationTokenSource(TestHost.WaitLimit);
        await using var waiting = host.Client.WatchAsync(new JobEventFilter { Kinds = new HashSet<JobEventKind> { JobEventKind.Waiting } }, stop.Token).GetAsyncEnumerator(stop.Token);
        var next = waiting.MoveNextAsync();

        var first = await host.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "k" });
        await host.Behavior.FirstStart.Task.WaitAsync(TestHost.WaitLimit);
        var second = await host.SubmitAsync(new JobRequest("work") { ConcurrencyKey = "k" });
        await WaitUntilAsync(host, s => s.PendingCount == 1);
        var third = await host.SubmitAsync(new JobRequest("work"));
        await host.WaitForStateAsync(third, JobState.Running);
        var fourth = await host.SubmitAsync(new JobRequest("work"));

        // Events arrive in order: everything published about the others comes before the fourth job's first event.
        var seen = new List<(JobId Job, WaitReason Reason, string? Limit)>();
        while (true)
        {
            Assert.True(await next);
            var e = waiting.Current;
            seen.Add((e.JobId, e.Explanation!.Reason, e.Explanation.Limit));
            if (e.JobId == fourth)
            {
                break;
            }

            next = waiting.MoveNextAsync();
        }

        Assert.Equal([(second, WaitReason.ConcurrencyLimit, "key:k=1"), (fourth, WaitReason.NoFreeSlot, null)], seen);
        Assert.DoesNotContain(seen, s => s.Job == first || s.Job == third);
        gate.SetResult();
        await host.WaitForStateAsync(fourth, JobState.Succeeded);
    }
}
