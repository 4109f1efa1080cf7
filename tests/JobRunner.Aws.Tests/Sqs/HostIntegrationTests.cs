using JobRunner.Aws.Sqs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using static JobRunner.Aws.Tests.Support.AwsTestEnvironment;

namespace JobRunner.Aws.Tests.Sqs;

/// <summary>A whole host: AddJobRunner with UseSqsQueue and UseS3Logs, credentials from the default chain.</summary>
public sealed class HostIntegrationTests
{
    [Fact]
    public async Task Host_RunsJobsThroughSqs_AndKeepsTheirLogsInS3()
    {
        var bucket = Unique("logs");
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddJobRunner(runner => runner
            .ConfigureWorker(w => w.Slots = 4)
            .AddWorkload<Echo>("echo")
            .UseSqsQueue(sqs =>
            {
                // No Credentials: the default chain finds AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (set by aws.sh).
                sqs.Region = "us-east-1";
                sqs.ServiceUrl = SqsEndpoint(Fauxqs);
                sqs.QueueName = Unique("host");
                sqs.CreateQueues = true;
                sqs.WaitTime = TimeSpan.FromSeconds(1);
            })
            .UseS3Logs(s3 =>
            {
                s3.Bucket = bucket;
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
            Assert.IsType<SqsJobQueue>(host.Services.GetRequiredService<IJobQueue>());

            var submitted = new List<JobId>();
            for (var i = 0; i < 12; i++)
            {
                submitted.Add((await client.SubmitAsync(JobRequest.Create("echo", new EchoInput($"hello {i}")) with { Priority = 1 + (i % 10), Tenant = i % 2 == 0 ? "a" : "b" }, Guard())).Job.Id);
            }

            foreach (var id in submitted)
            {
                await foreach (var e in client.WatchAsync(id, Guard()))
                {
                    if (e.State is JobState.Succeeded or JobState.Failed or JobState.Cancelled)
                    {
                        Assert.Equal(JobState.Succeeded, e.State);
                        break;
                    }
                }
            }

            var logs = await host.Services.GetRequiredService<ILogStore>().ReadAsync(submitted[3], new LogQuery(), Guard());
            Assert.Contains(logs.Entries, l => l.Message == "echo hello 3");
        }
        finally
        {
            await host.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Host_WithMissingQueue_FailsToStart_NamingTheFix()
    {
        var builder = Host.CreateApplicationBuilder();
        var name = Unique("missing");
        builder.Services.AddJobRunner(runner => runner.UseSqsQueue(sqs =>
        {
            sqs.Region = "us-east-1";
            sqs.ServiceUrl = SqsEndpoint(Fauxqs);
            sqs.Credentials = Credentials;
            sqs.QueueName = name;
        }));
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<AwsServiceException>(() => host.StartAsync(Guard()));

        Assert.Contains($"'{name}' does not exist", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Host_WithWrongRegion_FailsValidation_NamingTheFix()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddJobRunner(runner => runner.UseSqsQueue(sqs =>
        {
            sqs.Region = "eu-middle-7";
            sqs.Credentials = Credentials;
        }));
        using var host = builder.Build();

        var error = Assert.Throws<OptionsValidationException>(() => host.Services.GetRequiredService<IOptions<SqsQueueOptions>>().Value);

        Assert.Contains("SqsQueueOptions.Region is 'eu-middle-7', which is not an AWS region", error.Message, StringComparison.Ordinal);
    }

    public sealed record EchoInput(string Text);

    public sealed class Echo : Workload<EchoInput>
    {
        protected override async ValueTask ExecuteAsync(EchoInput input, WorkloadContext context, CancellationToken cancellationToken)
            => await context.LogAsync("echo " + input.Text, LogStream.Output, cancellationToken);
    }
}
