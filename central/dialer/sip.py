"""pjsua2 wrapper for the engine process only (PJSIP is not fork-safe and wants one Endpoint per process).

Threading model: `threadCnt = 0` and `mainThreadOnly`, so every SIP callback runs inside
`SipStack.poll()` on the engine's main thread and no Python code races pjsua2. Media (conference
bridge, null sound device clock) runs in PJSIP's own C threads and never calls back into Python.
Callbacks only record facts (state, status, DTMF); the engine loop acts on them.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pjsua2 as pj

log = logging.getLogger("citybrain.dialer.sip")
PJSUA_MAX_CALLS = 4  # compile-time limit of the pjsua2-python 2.15 wheel (measured: the 5th call fails)
MIN_SESSION_EXPIRES_S = 90  # PJSIP's absolute minimum Min-SE: a smaller one aborts the process (assert)
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
TRANSPORTS = {"udp": pj.PJSIP_TRANSPORT_UDP, "tcp": pj.PJSIP_TRANSPORT_TCP, "tls": pj.PJSIP_TRANSPORT_TLS}


@dataclass
class SipConfig:
    bind_host: str = "127.0.0.1"
    port: int = 0  # 0 = any free port
    clock_rate: int = 16000
    codecs: list[str] = field(default_factory=lambda: ["G722/16000/1", "PCMU/8000/1", "PCMA/8000/1"])
    # The pjsua2-python wheel is built with PJSUA_MAX_CALLS = 4: more per Endpoint fails with
    # PJ_ETOOMANY whatever uaConfig.maxCalls says, so scale out with more engine processes.
    max_calls: int = 4
    registrar: str | None = None  # e.g. sip:trunk.example:5060; None = dial direct URIs
    username: str = "robot"
    password: str = ""
    realm: str = "*"  # digest auth realm ("*": answer any realm's challenge)
    domain: str | None = None  # the AOR's domain (sip:robot@<domain>); default: the registrar's host
    proxy: str | None = None  # outbound proxy URI (e.g. sip:sbc.example;lr): every request goes through it
    transport: str = "udp"  # udp | tcp | tls
    # TLS (transport "tls"): the trunk's certificate is verified against tls_ca_file (default: the system
    # bundle) and TLS 1.2 is the floor; our own certificate and key, for a trunk that asks for one (mutual
    # TLS) and for listening (a test peer, a drill callee). tls_verify False only for a lab trunk.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_verify: bool = True
    rtp_port: int = 0  # first RTP port (0 = any); each call takes an RTP/RTCP pair from here
    rtp_port_range: int = 0  # how many ports from rtp_port may be used (0 = no limit)
    # RFC 4028 session timers: a leg whose refresher (this engine) died is torn down by the peer/trunk
    # within this many seconds, which is why the claim lease must be longer (EngineConfig.lease_s).
    # 0 = off (then only the trunk's own limits end an orphaned leg).
    session_expires_s: int = 90
    reg_retry_s: float = 60.0  # after a failed registration, try again this often
    log_level: int = 0

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"sip.transport: {self.transport!r} is not one of {', '.join(TRANSPORTS)}")
        if self.session_expires_s and self.session_expires_s < MIN_SESSION_EXPIRES_S:
            raise ValueError(f"sip.session_expires_s: at least {MIN_SESSION_EXPIRES_S} s (PJSIP's minimum), or 0")
        if not 0 <= self.rtp_port <= 65535 or not 0 <= self.rtp_port_range <= 65535:
            raise ValueError("sip.rtp_port: ports are 0..65535")
        if self.transport == "tls":
            if self.tls_ca_file is None and self.tls_verify:
                self.tls_ca_file = next((p for p in SYSTEM_CA_FILES if Path(p).is_file()), None)
                if self.tls_ca_file is None:
                    raise ValueError("sip.tls_ca_file: no CA bundle to verify the trunk with (give one)")
            for name in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
                f = getattr(self, name)
                if f is not None and not Path(f).is_file():
                    raise ValueError(f"sip.{name}: {f} is not a file")
            if (self.tls_cert_file is None) != (self.tls_key_file is None):
                raise ValueError("sip.tls_key_file: a certificate and its key go together")
        elif self.tls_cert_file or self.tls_key_file or self.tls_ca_file:
            raise ValueError(f"sip.transport: TLS files given but the transport is {self.transport!r}")


class RobotCall(pj.Call):
    def __init__(self, acc: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(acc, call_id)
        self.state = pj.PJSIP_INV_STATE_NULL
        self.status = 0
        self.reason = ""
        self.media_ready = False
        self.confirmed = False
        self.disconnected = False
        self.dtmf: deque[str] = deque()

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 names)
        ci = self.getInfo()
        self.state = ci.state
        if ci.lastStatusCode:
            self.status = int(ci.lastStatusCode)
            self.reason = ci.lastReason
        if ci.state == pj.PJSIP_INV_STATE_CONFIRMED:
            self.confirmed = True
        elif ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.disconnected = True

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        ci = self.getInfo()  # keep the CallInfo alive: SWIG vector items point into it
        for mi in ci.media:
            if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media_ready = True

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:  # noqa: N802
        self.dtmf.append(prm.digit)

    def audio(self) -> pj.AudioMedia:
        return self.getAudioMedia(-1)


class _Account(pj.Account):
    def __init__(self) -> None:
        super().__init__()
        self.incoming: deque[RobotCall] = deque()
        self.reg_state = "none"  # none | registering | registered | failed
        self.reg_status = 0
        self.reg_error = ""

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802
        self.reg_status = int(prm.code)
        ok = 200 <= prm.code < 300
        self.reg_state = "registered" if ok and prm.expiration > 0 else ("none" if ok else "failed")
        self.reg_error = "" if ok else f"{prm.code} {prm.reason}".strip()
        if ok:
            log.info("registered (%s %s, expires %s s)", prm.code, prm.reason, prm.expiration)
        else:
            log.error("registration failed: %s %s (status %s)", prm.code, prm.reason, prm.status)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        # The Call object must exist before this callback returns, or pjsua2 rejects the call (500).
        self.incoming.append(RobotCall(self, prm.callId))


class SipStack:
    def __init__(self, cfg: SipConfig) -> None:
        self.cfg = cfg
        if cfg.max_calls > PJSUA_MAX_CALLS:
            log.warning("sip.max_calls %d: this pjsua2 build holds at most %d calls per process; serving %d "
                        "(start more engine workers for more)", cfg.max_calls, PJSUA_MAX_CALLS, PJSUA_MAX_CALLS)
        self.max_calls = min(cfg.max_calls, PJSUA_MAX_CALLS)
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        ec = pj.EpConfig()
        ec.uaConfig.threadCnt = 0
        ec.uaConfig.mainThreadOnly = True
        ec.uaConfig.maxCalls = min(cfg.max_calls, PJSUA_MAX_CALLS)
        ec.uaConfig.userAgent = "CityBrain-Dialer"
        ec.logConfig.level = cfg.log_level
        ec.logConfig.consoleLevel = cfg.log_level
        ec.medConfig.clockRate = cfg.clock_rate
        ec.medConfig.sndClockRate = cfg.clock_rate
        ec.medConfig.noVad = True  # VAD would drop the quiet frames our endpointer relies on
        ec.medConfig.ecTailLen = 0  # no echo canceller: nothing to cancel with a null sound device
        ec.medConfig.maxMediaPorts = min(cfg.max_calls, PJSUA_MAX_CALLS) * 4 + 16  # call + player + recorder per call
        self.ep.libInit(ec)
        tc = pj.TransportConfig()
        tc.port = cfg.port
        tc.boundAddress = cfg.bind_host
        if cfg.transport == "tls":
            tls = tc.tlsConfig
            tls.method = pj.PJSIP_TLSV1_2_METHOD  # the floor; a TLS 1.3 trunk negotiates up
            tls.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
            tls.CaListFile = cfg.tls_ca_file or ""
            tls.certFile = cfg.tls_cert_file or ""
            tls.privKeyFile = cfg.tls_key_file or ""
            tls.verifyServer = cfg.tls_verify
            tls.msecTimeout = 10_000
        tid = self.ep.transportCreate(TRANSPORTS[cfg.transport], tc)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()  # a server has no sound card; the bridge runs on a timer
        for i, codec in enumerate(cfg.codecs):
            try:
                self.ep.codecSetPriority(codec, 255 - i)
            except pj.Error:
                log.warning("codec %s not available", codec)
        self.local = self.ep.transportGetInfo(tid).localName  # "127.0.0.1:port"
        self.port = int(self.local.rsplit(":", 1)[1])
        self.acc = _Account()
        ac = pj.AccountConfig()
        ac.idUri = f"sip:{cfg.username}@{self.domain()}"
        ac.sipConfig.transportId = tid
        if cfg.proxy:
            ac.sipConfig.proxies.append(cfg.proxy)
        if cfg.registrar or cfg.proxy:  # a proxy may challenge INVITEs (407) as a registrar does REGISTER
            ac.sipConfig.authCreds.append(pj.AuthCredInfo("digest", cfg.realm, cfg.username, 0, cfg.password))
        if cfg.registrar:
            ac.regConfig.registrarUri = cfg.registrar
            ac.regConfig.retryIntervalSec = int(cfg.reg_retry_s)
            self.acc.reg_state = "registering"
        else:
            ac.regConfig.registerOnAdd = False
        if cfg.session_expires_s:
            ac.callConfig.timerUse = pj.PJSUA_SIP_TIMER_ALWAYS
            ac.callConfig.timerSessExpiresSec = cfg.session_expires_s
            ac.callConfig.timerMinSESec = MIN_SESSION_EXPIRES_S
        else:
            ac.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        mt = ac.mediaConfig.transportConfig
        mt.boundAddress = cfg.bind_host
        mt.port = cfg.rtp_port
        mt.portRange = cfg.rtp_port_range
        self.acc.create(ac)

    def domain(self) -> str:
        """The AOR's domain: the configured one, else the registrar's host, else this transport's address."""
        if self.cfg.domain:
            return self.cfg.domain
        if self.cfg.registrar:
            host = self.cfg.registrar.split(":", 1)[1] if ":" in self.cfg.registrar else self.cfg.registrar
            host = host.split(";", 1)[0].split(">", 1)[0]
            return host.rsplit(":", 1)[0] if host.count(":") == 1 else host  # no port in an AOR
        return self.local

    @property
    def registration(self) -> tuple[str, int, str]:
        """(state, last SIP status, error) of the trunk registration; ("none", 0, "") without a registrar."""
        return self.acc.reg_state, self.acc.reg_status, self.acc.reg_error

    @property
    def may_dial(self) -> bool:
        """Without a registrar, always; with one, only while registered."""
        return self.cfg.registrar is None or self.acc.reg_state == "registered"

    def reregister(self) -> None:
        try:
            self.acc.reg_state = "registering"
            self.acc.setRegistration(True)
        except pj.Error as e:
            self.acc.reg_state = "failed"
            self.acc.reg_error = e.info()

    def poll(self, ms: int = 10) -> None:
        self.ep.libHandleEvents(ms)

    def dial(self, uri: str) -> RobotCall:
        call = RobotCall(self.acc)
        call.makeCall(uri, pj.CallOpParam(True))
        return call

    def accept(self) -> RobotCall | None:
        """Next incoming call (used by the test callee simulator)."""
        return self.acc.incoming.popleft() if self.acc.incoming else None

    @staticmethod
    def hangup(call: RobotCall, code: int = 0) -> None:
        prm = pj.CallOpParam()
        if code:
            prm.statusCode = code
        try:
            call.hangup(prm)
        except pj.Error:
            pass  # already gone

    @staticmethod
    def answer(call: RobotCall, code: int) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        call.answer(prm)

    @staticmethod
    def send_dtmf(call: RobotCall, digits: str) -> None:
        call.dialDtmf(digits)  # RFC 2833 telephone-event by default

    def close(self) -> None:
        self.ep.hangupAllCalls()
        for _ in range(30):
            self.poll(10)
        self.acc.shutdown()
        self.ep.libDestroy()


class Player:
    """Plays WAV files back to back into a call; keeps the pjsua2 objects alive while they play."""

    def __init__(self, files: list[Path], sink: pj.AudioMedia) -> None:
        self.obj = pj.AudioMediaPlayer()
        if len(files) == 1:
            self.obj.createPlayer(str(files[0]), pj.PJMEDIA_FILE_NO_LOOP)
        else:
            self.obj.createPlaylist([str(f) for f in files], "prompts", pj.PJMEDIA_FILE_NO_LOOP)
        self.sink = sink
        self.obj.startTransmit(sink)

    def stop(self) -> None:
        try:
            self.obj.stopTransmit(self.sink)
        except pj.Error:
            pass


class Recorder:
    def __init__(self, path: Path, source: pj.AudioMedia) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.obj = pj.AudioMediaRecorder()
        self.obj.createRecorder(str(path))
        source.startTransmit(self.obj)
