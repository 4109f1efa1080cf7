using System.Net;
using System.Text;
using System.Text.Json;
using Amazon.Runtime;
using JobRunner.Aws.Sqs;

namespace JobRunner.Aws.Tests.Support;

/// <summary>
/// An SQS endpoint played by the test: each request goes to <c>respond</c> (action, JSON body, request number), which
/// may wait for the test's signal before it answers. Requests are recorded in order.
/// </summary>
internal sealed class SqsScript(Func<SqsScript.Request, Task<HttpResponseMessage>> respond) : HttpMessageHandler
{
    private readonly Lock _lock = new();
    private readonly List<Request> _requests = [];

    public IReadOnlyList<Request> Requests
    {
        get
        {
            lock (_lock)
            {
                return [.. _requests];
            }
        }
    }

    public static HttpResponseMessage Ok(string json = "{}") => new(HttpStatusCode.OK) { Content = new StringContent(json, Encoding.UTF8, "application/x-amz-json-1.0") };

    public static HttpResponseMessage Error(HttpStatusCode status, string type, string message)
        => new(status) { Content = new StringContent($"{{\"__type\":\"{type}\",\"message\":\"{message}\"}}", Encoding.UTF8, "application/x-amz-json-1.0") };

    /// <summary>A queue on this script: no retries, dummy credentials.</summary>
    public SqsJobQueue Queue(Action<SqsQueueOptions>? configure = null, TimeProvider? time = null)
    {
        var options = new SqsQueueOptions { Region = "us-east-1", ServiceUrl = new Uri("http://127.0.0.1:9/"), Credentials = new BasicAWSCredentials("AKID", "secret"), MaxRetries = 0, WaitTime = TimeSpan.FromSeconds(1) };
        configure?.Invoke(options);
        return AwsSetup.CreateQueue(options, time ?? TimeProvider.System, transport: this);
    }

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var body = request.Content is null ? "" : await request.Content.ReadAsStringAsync(cancellationToken);
        var action = request.Headers.GetValues("X-Amz-Target").Single()["AmazonSQS.".Length..];
        Request recorded;
        lock (_lock)
        {
            recorded = new Request(action, body, _requests.Count, cancellationToken);
            _requests.Add(recorded);
        }

        return await respond(recorded);
    }

    internal sealed record Request(string Action, string Body, int Number, CancellationToken Aborted)
    {
        public JsonElement Json => JsonDocument.Parse(Body).RootElement;
    }
}
