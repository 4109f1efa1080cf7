using System.Buffers;
using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using JobRunner.Aws.Http;

namespace JobRunner.Aws.Sqs;

/// <summary>
/// The SQS JSON protocol (<c>application/x-amz-json-1.0</c>, <c>X-Amz-Target: AmazonSQS.&lt;Action&gt;</c>) on an
/// <see cref="HttpClient"/> whose handler signs every request. Throttling, 5xx and network failures are retried with
/// exponential back-off; what is left surfaces as a transient <see cref="AwsServiceException"/>.
/// </summary>
internal sealed class SqsClient : IDisposable
{
    private static readonly MediaTypeHeaderValue s_json = new("application/x-amz-json-1.0");
    private readonly HttpClient _http;
    private readonly Uri _endpoint;
    private readonly TimeProvider _time;
    private readonly int _maxRetries;
    private long _calls;

    public SqsClient(HttpClient http, Uri endpoint, TimeProvider time, int maxRetries)
    {
        _http = http;
        _endpoint = endpoint;
        _time = time;
        _maxRetries = maxRetries;
    }

    /// <summary>Gets how many HTTP requests were sent (retries included): the benchmark's API calls.</summary>
    public long Calls => Interlocked.Read(ref _calls);

    /// <summary>Sends one action whose request body <paramref name="write"/> writes, and parses the response.</summary>
    public async Task<JsonDocument> SendAsync<TState>(string action, TState state, Action<Utf8JsonWriter, TState> write, CancellationToken cancellationToken)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            write(writer, state);
            writer.WriteEndObject();
        }

        var body = buffer.WrittenMemory;
        for (var attempt = 0; ; attempt++)
        {
            Interlocked.Increment(ref _calls);
            using var request = new HttpRequestMessage(HttpMethod.Post, _endpoint) { Content = new ReadOnlyMemoryContent(body) };
            request.Content.Headers.ContentType = s_json;
            request.Headers.TryAddWithoutValidation("X-Amz-Target", "AmazonSQS." + action);
            AwsServiceException failure;
            try
            {
                using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseContentRead, cancellationToken).ConfigureAwait(false);
                var stream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
                await using (stream.ConfigureAwait(false))
                {
                    if (response.IsSuccessStatusCode)
                    {
                        // Some servers answer an empty result (e.g. a ReceiveMessage without messages) with no body.
                        return response.Content.Headers.ContentLength switch
                        {
                            0 => JsonDocument.Parse("{}"),
                            > 0 => await JsonDocument.ParseAsync(stream, default, cancellationToken).ConfigureAwait(false),
                            _ => await ParseOrEmptyAsync(stream, cancellationToken).ConfigureAwait(false),
                        };
                    }

                    failure = await ReadErrorAsync(action, response, stream, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (HttpRequestException e)
            {
                failure = new AwsServiceException("sqs", "NetworkError", e.StatusCode, transient: true, $"SQS {action} to {_endpoint} failed: {e.Message}. Check the service URL and the network.", e);
            }
            catch (OperationCanceledException e) when (!cancellationToken.IsCancellationRequested)
            {
                failure = new AwsServiceException("sqs", "Timeout", null, transient: true, $"SQS {action} to {_endpoint} timed out.", e);
            }

            if (!failure.IsTransient || attempt >= _maxRetries)
            {
                throw failure;
            }

            await Task.Delay(AwsRetry.Backoff(attempt, TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(5)), _time, cancellationToken).ConfigureAwait(false);
        }
    }

    public void Dispose() => _http.Dispose();

    private static async Task<JsonDocument> ParseOrEmptyAsync(Stream stream, CancellationToken cancellationToken)
    {
        using var copy = new MemoryStream();
        await stream.CopyToAsync(copy, cancellationToken).ConfigureAwait(false);
        return copy.Length == 0 ? JsonDocument.Parse("{}") : JsonDocument.Parse(copy.GetBuffer().AsMemory(0, (int)copy.Length));
    }

    private static async Task<AwsServiceException> ReadErrorAsync(string action, HttpResponseMessage response, Stream stream, CancellationToken cancellationToken)
    {
        var status = (int)response.StatusCode;
        string code = "HttpError" + status.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string message = response.ReasonPhrase ?? "";
        try
        {
            using var error = await JsonDocument.ParseAsync(stream, default, cancellationToken).ConfigureAwait(false);
            if (error.RootElement.ValueKind == JsonValueKind.Object)
            {
                if (error.RootElement.TryGetProperty("__type", out var type) && type.GetString() is { } t)
                {
                    code = t[(t.LastIndexOf('#') + 1)..];
                }

                if ((error.RootElement.TryGetProperty("message", out var m) || error.RootElement.TryGetProperty("Message", out m)) && m.GetString() is { } text)
                {
                    message = text;
                }
            }
        }
        catch (JsonException)
        {
            // Not JSON (a proxy's page): the status says enough.
        }

        if (code.StartsWith("HttpError", StringComparison.Ordinal) && response.Headers.TryGetValues("x-amzn-query-error", out var query)
            && query.FirstOrDefault() is { } q && q.Split(';')[0] is { Length: > 0 } queryCode)
        {
            code = queryCode;
        }

        if (code == "AWS.SimpleQueueService.NonExistentQueue")
        {
            code = "QueueDoesNotExist";
        }

        var transient = AwsRetry.IsTransientStatus(status) || AwsRetry.IsTransientCode(code);
        return new AwsServiceException("sqs", code, response.StatusCode, transient, $"SQS {action} failed with {code} ({status}): {message}{Hint(code, response.StatusCode)}");
    }

    private static string Hint(string code, HttpStatusCode status) => code switch
    {
        "QueueDoesNotExist" => ". Create the queue, set SqsQueueOptions.CreateQueues = true, or check the queue name and SqsQueueOptions.Region.",
        "InvalidClientTokenId" or "UnrecognizedClientException" or "SignatureDoesNotMatch" or "IncompleteSignature" or "MissingAuthenticationToken"
            => ". Check the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role) and SqsQueueOptions.Region.",
        "AccessDenied" or "AccessDeniedException" => ". Grant the credentials sqs:SendMessage, ReceiveMessage, DeleteMessage, ChangeMessageVisibility and GetQueueUrl on the queue.",
        _ when status == HttpStatusCode.Forbidden => ". Check the credentials and their permissions on the queue.",
        _ => "",
    };
}
