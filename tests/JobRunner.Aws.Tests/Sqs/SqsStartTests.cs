using System.Net;
using Amazon.Runtime;
using JobRunner.Aws.Tests.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>What the SQS queue checks and sets up at start (against a scripted endpoint, or the emulators).</summary>
public sealed class SqsStartTests
{
    [Fact]
    public async Task Start_AfterAFailedStart_TriesAgain()
    {
        var lookups = 0;
        using var script = new SqsScript(_ => Task.FromResult(Interlocked.Increment(ref lookups) == 1
            ? SqsScript.Error(HttpStatusCode.BadRequest, "com.amazonaws.sqs#QueueDoesNotExist", "The specified queue does not exist.")
            : SqsScript.Ok("{\"QueueUrl\":\"http://127.0.0.1:9/1/jobrunner\"}")));
        await using var queue = script.Queue();

        await Assert.ThrowsAsync<AwsServiceException>(() => queue.StartAsync(Guard()));
        await queue.StartAsync(Guard());

        Assert.Equal("http://127.0.0.1:9/1/jobrunner", queue.QueueUrls[0]);
        Assert.Equal(2, lookups);
    }

    [Theory]
    [InlineData(false, "jobs.fifo", "SqsQueueOptions.Fifo is false. Set SqsQueueOptions.Fifo = true")]
    [InlineData(true, "http://127.0.0.1:9/1/jobs", "SqsQueueOptions.Fifo is true. Set SqsQueueOptions.Fifo = false")]
    public async Task Start_QueueOfTheOtherKind_FailsAndNamesTheFix(bool fifo, string queue, string expected)
    {
        using var script = new SqsScript(r => Task.FromResult(r.Action == "GetQueueUrl"
            ? SqsScript.Ok("{\"QueueUrl\":\"http://127.0.0.1:9/1/" + r.Json.GetProperty("QueueName").GetString() + "\"}")
            : SqsScript.Ok("{\"Attributes\":{\"QueueArn\":\"arn:aws:sqs:us-east-1:1:jobs\"}}")));
        await using var sqs = script.Queue(o =>
        {
            o.Fifo = fifo;
            o.QueueName = queue;
        });

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => sqs.StartAsync(Guard()));

        Assert.False(error.IsTransient);
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task HostStart_LeaseLongerThanSqsVisibility_FailsWithTheFix()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddJobRunner(runner => runner
            .ConfigureWorker(w =>
            {
                w.LeaseDuration = TimeSpan.FromHours(13);
                w.HeartbeatInterval = TimeSpan.FromHours(1);
            })
            .UseSqsQueue(sqs =>
            {
                sqs.Region = "us-east-1";
                sqs.ServiceUrl = new Uri("http://127.0.0.1:9/");
                sqs.Credentials = new BasicAWSCredentials("AKID", "secret");
                sqs.MaxRetries = 0;
            }));
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(Guard()));

        Assert.Contains("WorkerOptions.LeaseDuration is 13:00:00, but with the SQS queue the lease is a message's visibility timeout, which SQS limits to 12 hours. Set WorkerOptions.LeaseDuration to 12 hours or less", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(SqsEmulators), MemberType = typeof(AwsTestEnvironment))]
    public async Task CreatedQueues_KeepMessagesFourteenDays(string emulator)
    {
        var options = QueueOptions(emulator);
        options.DeadLetterQueueName = options.QueueName + "-dlq";
        await using var queue = AwsSetup.CreateQueue(options, TimeProvider.System);
        using var raw = RawClient(emulator);

        await queue.StartAsync(Guard());

        foreach (var url in new[] { queue.QueueUrls[0]!, queue.DeadLetterUrl! })
        {
            using var attributes = await raw.SendAsync("GetQueueAttributes", url, static (w, u) =>
            {
                w.WriteString("QueueUrl", u);
                w.WriteStartArray("AttributeNames");
                w.WriteStringValue("MessageRetentionPeriod");
                w.WriteEndArray();
            }, CancellationToken.None);
            Assert.Equal("1209600", attributes.RootElement.GetProperty("Attributes").GetProperty("MessageRetentionPeriod").GetString());
        }
    }
}
