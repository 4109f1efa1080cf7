using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.S3;

/// <summary>A whole host with UseS3Checkpoints: attempts save to S3 and the next attempt starts from there.</summary>
public sealed class CheckpointHostIntegrationTests
{
    [Fact]
    public async Task Host_SavesCheckpointsInS3_AndTheRetryResumesFromThem()
    {
        var builder = Host.CreateApplicationBuilder();
        var seen = new ConcurrentQueue<(int Attempt, int? Done)>();
        builder.Services.AddSingleton(seen);
        builder.Services.AddJobRunner(runner => runner
            .AddWorkload<CountTo>("count", w => w.Retry = RetryPolicy.Fixed(TimeSpan.Zero, maxAttempts: 3))
            .UseS3Checkpoints(s3 =>
            {
                s3.Bucket = Unique("checkpoints");
                s3.Region = "us-east-1";
                s3.ServiceUrl = S3Endpoint;
                s3.ForcePathStyle = true;
                s3.CreateBucket = true;
            }));
        using var host = builder.Build();
        await host.StartAsync(Guard());
        try
        {
            var client = host.Services.GetRequiredService<IJobClient>();
            var checkpoints = host.Services.GetRequiredService<ICheckpointStore>();
            var id = (await client.SubmitAsync(JobRequest.Create("count", 10), Guard())).Job.Id;
            await foreach (var e in client.WatchAsync(id, Guard()))
            {
                if (e.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
                {
                    break;
                }
            }

            var job = (await client.GetAsync(id, Guard()))!;
            Assert.Equal(JobState.Succeeded, job.State);
            Assert.Equal([(1, null), (2, 5)], seen.ToArray());

            // The checkpoints live in S3, not in the job record.
            Assert.Null(job.Checkpoint);
            var stored = await checkpoints.LoadAsync(id, Guard());
            Assert.NotNull(stored);
            Assert.Equal(2, stored.Attempt);
            Assert.Equal(job.Attempts[1].FenceToken, stored.FenceToken);
            Assert.Equal(10, JsonSerializer.Deserialize<int>(stored.Data.Span));
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>Counts to its input, checkpointing every step; the first attempt crashes after 5.</summary>
    public sealed class CountTo(ConcurrentQueue<(int Attempt, int? Done)> seen) : Workload<int, int?>
    {
        protected override async ValueTask ExecuteAsync(int input, int? checkpoint, WorkloadContext context, CancellationToken cancellationToken)
        {
            seen.Enqueue((context.Attempt, checkpoint));
            for (var done = (checkpoint ?? 0) + 1; done <= input; done++)
            {
                await context.SaveCheckpointAsync(done, cancellationToken);
                if (context.Attempt == 1 && done == 5)
                {
                    throw new InvalidOperationException("crashed after 5");
                }
            }
        }
    }
}
