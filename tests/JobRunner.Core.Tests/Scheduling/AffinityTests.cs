using JobRunner.Scheduling;
using JobRunner.Testing;
using Microsoft.Extensions.Options;

namespace JobRunner.Tests.Scheduling;

/// <summary>Affinity in the scheduler: the grammar, and what a worker with given labels does with each kind of term.</summary>
public sealed class AffinityTests
{
    private readonly FakeTimeProvider _time = new();
    private readonly SchedulerOptions _options = new();

    private FairScheduler Worker(params string[] labels) => new(
        Options.Create(_options),
        time: _time,
        labels: labels.Select(l => l.Split('=')).ToDictionary(p => p[0], p => p[1]),
        declineWindow: TimeSpan.FromSeconds(10));

    private QueuedJob Job(string? affinity, string workload = "w", int priority = 5) => new()
    {
        Id = JobId.New(_time),
        Priority = priority,
        Tenant = "t",
        Workload = workload,
        Affinity = affinity,
        EnqueuedAt = _time.GetUtcNow(),
    };

    [Fact]
    public void Parse_Expression_SplitsRequiredPreferredAndAvoided()
    {
        var errors = new List<string>();

        var expression = AffinityExpression.Parse(" gpu=true, zone=eu? ,!spot, ssd, !node.kubernetes.io/arch=arm64 ", errors);

        Assert.Empty(errors);
        Assert.Equal([new LabelTerm("gpu", "true"), new LabelTerm("ssd", null)], expression!.Required);
        Assert.Equal([new LabelTerm("zone", "eu")], expression.Preferred);
        Assert.Equal([new LabelTerm("spot", null), new LabelTerm("node.kubernetes.io/arch", "arm64")], expression.Avoided);
    }

    [Theory]
    [InlineData("", "Affinity is empty", "Leave it null")]
    [InlineData("gpu=true,,zone=eu", "empty term (number 2)", "Remove the extra comma")]
    [InlineData("gpu=true,", "empty term (number 2)", "Remove the extra comma")]
    [InlineData("!spot?", "'!spot?' both avoids", "write '!spot' to never run on such a worker, or 'spot?' to prefer it")]
    [InlineData("g pu=true", "'g pu=true' has the label key 'g pu'", "use an optional DNS prefix")]
    [InlineData("=true", "'=true' has the label key ''", "A term is 'key', 'key=value'")]
    [InlineData("zone=", "'zone=' has no value", "Write 'zone=VALUE'")]
    [InlineData("zone=e u", "'zone=e u' has the value 'e u'", "use a name")]
    [InlineData("gpu=true, !gpu", "'gpu=true' and '!gpu' contradict", "Remove one of them")]
    [InlineData("zone=eu, zone=us", "'zone=eu' and 'zone=us' require two values", "make the other preferred ('zone=us?')")]
    [InlineData("zone=eu??", "'zone=eu??' has the value 'eu?'", "use a name")]
    public void Parse_Malformed_NamesTheTermAndTheFix(string affinity, string problem, string fix)
    {
        var errors = new List<string>();

        Assert.Null(AffinityExpression.Parse(affinity, errors));

        var error = Assert.Single(errors);
        Assert.Contains(problem, error, StringComparison.Ordinal);
        Assert.Contains(fix, error, StringComparison.Ordinal);
    }

    [Fact]
    public void Required_WorkerWithoutTheLabel_NeverTakesIt_EvenAfterAnyWait()
    {
        var scheduler = Worker("zone=eu", "gpu=false");
        var job = Job("gpu=true");

        Assert.Equal(Admission.Declined, scheduler.Add(job));
        Assert.Equal(Admission.Parked, scheduler.Add(job));
        Assert.Equal(Admission.Duplicate, scheduler.Add(job));
        _time.Advance(TimeSpan.FromDays(1));

        Assert.False(scheduler.TryTake(out _));
        Assert.Equal(0, scheduler.PendingCount);
        var explanation = scheduler.Explain(job.Id, freeSlots: 1)!;
        Assert.Equal((WaitReason.NoCapableWorker, "gpu=true"), (explanation.Reason, explanation.Limit));
        Assert.Contains("lacks the required label gpu=true (it has gpu=false)", explanation.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Required_WorkerWithTheLabel_TakesIt()
    {
        var scheduler = Worker("gpu=true");
        var job = Job("gpu=true, ssd?");
        scheduler.Add(Job("!spot"));

        Assert.Equal(Admission.Declined, scheduler.Add(job)); // it lacks the preferred 'ssd'
        Assert.Equal(Admission.Held, scheduler.Add(job));
        _time.Advance(_options.PreferenceWait);

        Assert.True(scheduler.TryTake(out var first));
        Assert.True(scheduler.TryTake(out var second));
        Assert.Equal(job, second);
        Assert.Equal("!spot", first.Affinity);
    }

    [Fact]
    public void Avoided_WorkerWithTheLabel_NeverTakesIt()
    {
        var scheduler = Worker("spot=true");
        var anyValue = Job("!spot");
        var thatValue = Job("!spot=true");
        var otherValue = Job("!spot=false");

        scheduler.Add(anyValue);
        scheduler.Add(thatValue);
        Assert.Equal(Admission.Parked, scheduler.Add(anyValue));
        Assert.Equal(Admission.Parked, scheduler.Add(thatValue));
        Assert.Equal(Admission.Held, scheduler.Add(otherValue));
        _time.Advance(TimeSpan.FromDays(1));

        Assert.True(scheduler.TryTake(out var taken));
        Assert.Equal(otherValue, taken);
        Assert.False(scheduler.TryTake(out _));
        var explanation = scheduler.Explain(anyValue.Id, freeSlots: 1)!;
        Assert.Equal((WaitReason.NoCapableWorker, "!spot"), (explanation.Reason, explanation.Limit));
        Assert.Contains("has the avoided label spot=true", explanation.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Preferred_PreferredWorkerGetsItFirst_OtherWorkerOnlyAfterThePreferenceWait()
    {
        _options.PreferenceWait = TimeSpan.FromSeconds(1);
        var eu = Worker("zone=eu");
        var us = Worker("zone=us");
        var first = Job("zone=eu?");
        var second = Job("zone=eu?");

        // Both reach the worker without the label first: it gives them back so that a preferred worker gets the first chance.
        Assert.Equal(Admission.Declined, us.Add(first));
        Assert.Equal(Admission.Declined, us.Add(second));
        var declined = us.Explain(first.Id, freeSlots: 1)!;
        Assert.Equal((WaitReason.PreferredWorker, "zone=eu?"), (declined.Reason, declined.Limit));

        // The preferred worker takes the first at once.
        Assert.Equal(Admission.Held, eu.Add(first));
        Assert.True(eu.TryTake(out var taken));
        Assert.Equal(first, taken);

        // The second comes back to the other worker: it waits there until the preference wait ends, then runs.
        Assert.Equal(Admission.Held, us.Add(second));
        Assert.False(us.TryTake(out _));
        Assert.Equal(second.EnqueuedAt + TimeSpan.FromSeconds(1), us.NextWake);
        var waiting = us.Explain(second.Id, freeSlots: 1)!;
        Assert.Equal((WaitReason.PreferredWorker, "zone=eu?"), (waiting.Reason, waiting.Limit));
        Assert.Contains("lacks the preferred label zone=eu", waiting.Message, StringComparison.Ordinal);

        _time.Advance(TimeSpan.FromSeconds(0.999));
        Assert.False(us.TryTake(out _));
        _time.Advance(TimeSpan.FromMilliseconds(1));
        Assert.True(us.TryTake(out taken));
        Assert.Equal(second, taken);
    }

    [Fact]
    public void Preferred_WaitAlreadyOver_IsTakenAtOnce_AndZeroWaitNeverDefers()
    {
        var us = Worker("zone=us");
        var old = Job("zone=eu?");
        _time.Advance(_options.PreferenceWait);

        Assert.Equal(Admission.Held, us.Add(old));

        _options.PreferenceWait = TimeSpan.Zero;
        Assert.Equal(Admission.Held, Worker("zone=us").Add(Job("zone=eu?")));
    }

    [Fact]
    public void Preferred_WaitingJob_DoesNotHoldBackOtherJobsOfItsWorkload()
    {
        var us = Worker("zone=us");
        var prefers = Job("zone=eu?");
        var plain = Job(null);
        us.Add(prefers);
        us.Add(prefers);
        us.Add(plain);

        Assert.True(us.TryTake(out var taken));
        Assert.Equal(plain, taken);
        Assert.False(us.TryTake(out _));
    }

    [Fact]
    public void Preferred_AmongCapableJobs_PriorityOrderHolds()
    {
        var eu = Worker("zone=eu");
        var low = Job(null, priority: 2);
        var high = Job("zone=eu?", priority: 9);
        var mid = Job("!spot", priority: 5);
        foreach (var job in new[] { low, high, mid })
        {
            Assert.Equal(Admission.Held, eu.Add(job));
        }

        Assert.Equal([high, mid, low], Enumerable.Range(0, 3).Select(_ => eu.TryTake(out var j) ? j : null));
    }

    [Fact]
    public void Incapable_DoesNotBlockCapableJobsBehindIt_NorTakeASlot()
    {
        var scheduler = Worker();
        var gpu = Job("gpu=true", priority: 10);
        var plain = Job(null, priority: 1);
        scheduler.Add(gpu);
        scheduler.Add(gpu);
        scheduler.Add(plain);

        Assert.True(scheduler.TryTake(out var taken));
        Assert.Equal(plain, taken);
        Assert.Equal(1, scheduler.RunningCount);
        Assert.Equal(1, scheduler.ParkedCount);
    }

    [Fact]
    public void TakeParked_GivesThemBack_AndTheyAreExplainedUntilForgotten()
    {
        var scheduler = Worker();
        var gpu = Job("gpu");
        scheduler.Add(gpu);
        scheduler.Add(gpu);
        var held = new List<QueuedJob>();
        scheduler.CopyHeld(held);
        Assert.Equal([gpu], held);

        var parked = new List<QueuedJob>();
        scheduler.TakeParked(parked);

        Assert.Equal([gpu], parked);
        Assert.Equal(0, scheduler.ParkedCount);
        Assert.Equal(WaitReason.NoCapableWorker, scheduler.Explain(gpu.Id, 1)!.Reason);
        Assert.Contains("gave it back to the queue", scheduler.Explain(gpu.Id, 1)!.Message, StringComparison.Ordinal);

        // Delivered again soon after: parked again rather than handed back and forth.
        Assert.Equal(Admission.Parked, scheduler.Add(gpu));
        scheduler.TakeParked(parked);
        _time.Advance(TimeSpan.FromSeconds(20));
        scheduler.TakeParked(parked);
        Assert.Null(scheduler.Explain(gpu.Id, 1));
        Assert.Equal(Admission.Declined, scheduler.Add(gpu));
    }

    [Fact]
    public void MalformedAffinity_FromAnotherProducer_IsNeverRunHere()
    {
        var scheduler = Worker("gpu=true");
        var job = Job("gpu=true,,");
        scheduler.Add(job);
        scheduler.Add(job);

        Assert.False(scheduler.TryTake(out _));
        Assert.Contains("malformed", scheduler.Explain(job.Id, 1)!.Message, StringComparison.Ordinal);
    }
}
