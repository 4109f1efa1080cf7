using JobRunner.Aws.Sqs;
using JobRunner.Aws.Tests.Support;
using JobRunner.Testing;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>What a receive does with what it brings: scheduled FIFO jobs, late deliveries, bodies in S3.</summary>
public sealed class SqsReceiveTests
{
    private static readonly TimeSpan Visibility = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task Fifo_JobNotDue_YoungMessage_IsHeldInFlight()
    {
        var options = QueueOptions(Fauxqs);
        options.Fifo = true;
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(Fauxqs);
        await queue.EnqueueAsync(Job(due: TimeProvider.System.GetUtcNow().AddDays(1)), Guard());

        Assert.Equal(0, await queue.PollOnceAsync(Visibility, Guard()));

        var counts = await CountsAsync(raw, queue.QueueUrls[0]!);
        Assert.Equal(0, counts["ApproximateNumberOfMessages"]);
        Assert.Equal(1, counts["ApproximateNumberOfMessagesNotVisible"]);
    }

    [Fact]
    public async Task Fifo_JobNotDue_MessageSentLongAgo_IsSentAgainInsteadOfHeld()
    {
        // SQS deletes a message once its retention period has passed since the send, in flight or not: a FIFO job due in
        // a week, held in flight 12 hours at a time, would be gone after the default 4 days. This process's clock is
        // 2 hours ahead of the emulator's, so the message looks 2 hours old.
        var time = new FakeTimeProvider(TimeProvider.System.GetUtcNow().AddHours(2));
        var options = QueueOptions(Fauxqs);
        options.Fifo = true;
        await using var queue = AwsSetup.CreateQueue(options, time);
        using var raw = RawClient(Fauxqs);
        var job = Job(due: time.GetUtcNow().AddDays(7), time: time);
        await queue.EnqueueAsync(job, Guard());
        time.Advance(TimeSpan.FromSeconds(1));

        Assert.Equal(0, await queue.PollOnceAsync(Visibility, Guard()));

        // The old message is gone and a fresh copy (a new send, so a new retention period) waits to be received and held.
        var counts = await CountsAsync(raw, queue.QueueUrls[0]!);
        Assert.Equal(1, counts["ApproximateNumberOfMessages"]);
        Assert.Equal(0, counts["ApproximateNumberOfMessagesNotVisible"]);
        var copy = Assert.Single(await ReceiveRawAsync(raw, queue.QueueUrls[0]!, waitSeconds: 1));
        Assert.True(SqsMessage.TryDecode(copy.GetProperty("Body").GetString()!, out var read, out _, out _));
        Assert.Equal(job.Id, read.Id);
        Assert.Equal(job.DueAt!.Value.ToUnixTimeMilliseconds(), read.DueAt!.Value.ToUnixTimeMilliseconds());
    }

    [Fact]
    public async Task Dequeue_DeliveryThatWaitedTooLongHere_IsReceivedAfresh_NotHandedOutNearlyLapsed()
    {
        var time = new FakeTimeProvider(TimeProvider.System.GetUtcNow());
        await using var queue = AwsSetup.CreateQueue(QueueOptions(Fauxqs), time);
        var job = Job(time: time);
        await queue.EnqueueAsync(job, Guard());
        Assert.Equal(1, await queue.PollOnceAsync(Visibility, Guard()));

        // It waited here 20 of its 30 seconds (another band answered first, say): 10 seconds are too few to start it.
        time.Advance(TimeSpan.FromSeconds(20));
        var buffer = new QueuedJob[1];
        Assert.Equal(1, await queue.DequeueAsync(buffer, Visibility, Guard()));

        Assert.Equal(job.Id, buffer[0].Id);
        Assert.Equal(time.GetUtcNow(), ((SqsReceipt)buffer[0].Receipt!).ReceivedAt);
    }

    [Fact]
    public async Task Dequeue_SeveralBands_ShareTheBufferAmongTheirReceives()
    {
        var polls = 0;
        var polled = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var script = new SqsScript(async r =>
        {
            if (r.Action == "GetQueueUrl")
            {
                return SqsScript.Ok("{\"QueueUrl\":\"http://127.0.0.1:9/1/" + r.Json.GetProperty("QueueName").GetString() + "\"}");
            }

            if (Interlocked.Increment(ref polls) == 2)
            {
                polled.SetResult();
            }

            await Task.Delay(Timeout.Infinite, r.Aborted);
            return SqsScript.Ok();
        });
        await using var queue = script.Queue(o =>
        {
            o.Bands.Add(new SqsPriorityBand(1, "low"));
            o.Bands.Add(new SqsPriorityBand(8, "high"));
        });
        using var stop = new CancellationTokenSource();

        var dequeue = queue.DequeueAsync(new QueuedJob[10], Visibility, stop.Token).AsTask();
        await polled.Task.WaitAsync(TimeSpan.FromSeconds(30));
        await stop.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => dequeue);

        Assert.Equal([5, 5], script.Requests.Where(r => r.Action == "ReceiveMessage").Select(r => r.Json.GetProperty("MaxNumberOfMessages").GetInt32()));
    }

    [Fact]
    public async Task Receive_BodyInS3WithoutAPayloadBucketHere_IsLeftInTheQueue_NotDeadLettered()
    {
        // Another host (with LargePayloadBucket set) sent it: a configuration error on this host, not a poison message.
        var options = QueueOptions(Fauxqs);
        options.DeadLetterQueueName = options.QueueName + "-dlq";
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(Fauxqs);
        await queue.StartAsync(Guard());
        await SendRawAsync(raw, queue.QueueUrls[0]!, SqsMessage.EncodePointer("payloads/elsewhere"));

        Assert.Equal(0, await queue.PollOnceAsync(Visibility, Guard()));

        Assert.Empty(await ReceiveRawAsync(raw, queue.DeadLetterUrl!, waitSeconds: 0));
        Assert.Equal(1, (await CountsAsync(raw, queue.QueueUrls[0]!))["ApproximateNumberOfMessagesNotVisible"]);
    }
}
