using System.Net;
using System.Text;
using JobRunner.Aws.Tests.Support;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>How enqueues become SendMessageBatch calls, against a scripted endpoint.</summary>
public sealed class SqsSendTests
{
    private static readonly TimeSpan Hang = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Enqueue_LargeBodiesUnderLoad_NeverMakeABatchOver256KiB()
    {
        // SQS refuses a whole SendMessageBatch whose bodies add up to more than 256 KiB (BatchRequestTooLong).
        var firstSend = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var script = new SqsScript(async r =>
        {
            if (r.Action == "SendMessageBatch" && firstSend.TrySetResult())
            {
                await gate.Task;
            }

            return SqsScript.Ok(r.Action == "GetQueueUrl" ? "{\"QueueUrl\":\"http://127.0.0.1:9/1/jobrunner\"}" : "{}");
        });
        await using var queue = script.Queue();
        await queue.StartAsync(Guard());

        // The first send is in flight; three ~100 KB bodies wait for the next batch meanwhile.
        var first = queue.EnqueueAsync(Large(), Guard()).AsTask();
        await firstSend.Task.WaitAsync(Hang);
        var waiting = Enumerable.Range(0, 3).Select(_ => queue.EnqueueAsync(Large(), Guard()).AsTask()).ToList();
        gate.SetResult();
        await Task.WhenAll(waiting.Append(first)).WaitAsync(Hang);

        var batches = script.Requests.Where(r => r.Action == "SendMessageBatch")
            .Select(r => r.Json.GetProperty("Entries").EnumerateArray().Select(e => Encoding.UTF8.GetByteCount(e.GetProperty("MessageBody").GetString()!)).ToList())
            .ToList();
        Assert.Equal(4, batches.Sum(b => b.Count));
        Assert.All(batches, b => Assert.InRange(b.Sum(), 1, 262_144));
    }

    [Fact]
    public async Task Enqueue_ResendOfAFailedEntryFails_FailsOnlyThatEntry_NotTheOneAlreadySent()
    {
        var firstSend = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var sends = 0;
        using var script = new SqsScript(async r =>
        {
            if (r.Action == "GetQueueUrl")
            {
                return SqsScript.Ok("{\"QueueUrl\":\"http://127.0.0.1:9/1/jobrunner\"}");
            }

            switch (Interlocked.Increment(ref sends))
            {
                case 1:
                    firstSend.SetResult();
                    await gate.Task;
                    return SqsScript.Ok();
                case 2:
                    // Two entries: SQS takes the second and fails the first on its side (HTTP 200).
                    return SqsScript.Ok("{\"Successful\":[{\"Id\":\"1\",\"MessageId\":\"m\"}],\"Failed\":[{\"Id\":\"0\",\"Code\":\"InternalError\",\"SenderFault\":false,\"Message\":\"try again\"}]}");
                default:
                    // The resend of the first fails as a whole.
                    return SqsScript.Error(HttpStatusCode.InternalServerError, "InternalError", "boom");
            }
        });
        await using var queue = script.Queue();
        await queue.StartAsync(Guard());

        var first = queue.EnqueueAsync(Job(), Guard()).AsTask();
        await firstSend.Task.WaitAsync(Hang);
        var resent = queue.EnqueueAsync(Job(), Guard()).AsTask();
        var sent = queue.EnqueueAsync(Job(), Guard()).AsTask();
        gate.SetResult();

        await first.WaitAsync(Hang);
        await sent.WaitAsync(Hang);
        await Assert.ThrowsAsync<AwsServiceException>(() => resent.WaitAsync(Hang));
        Assert.Equal(3, script.Requests.Count(r => r.Action == "SendMessageBatch"));
    }

    private static QueuedJob Large() => Job() with { Affinity = new string('x', 100_000) };
}
