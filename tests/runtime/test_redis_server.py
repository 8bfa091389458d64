import redis

from gridfleet.runtime.redis_server import RedisServer, find_redis_server


def test_binary_is_found() -> None:
    assert find_redis_server().endswith("redis-server")


def test_server_starts_answers_and_stops_cleanly() -> None:
    server = RedisServer().start()
    proc = server.process
    assert proc is not None
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    client.close()
    server.stop()
    assert proc.poll() is not None, "redis-server must be gone after stop()"


def test_password_protected_server_refuses_anonymous_clients() -> None:
    with RedisServer(password="s3cret") as server:
        assert "s3cret@" in server.url
        assert redis.Redis.from_url(server.url).ping()
        anonymous = redis.Redis(host="127.0.0.1", port=server.port)
        try:
            anonymous.ping()
            raise AssertionError("anonymous client was let in")
        except redis.AuthenticationError:
            pass
        except redis.ResponseError as exc:
            assert "NOAUTH" in str(exc)
