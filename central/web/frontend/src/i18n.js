// Two languages, zh-CN and English, switched per user (kept in localStorage under the user's name). Element
// Plus's own strings follow through its locale (App.vue's el-config-provider).
import { computed, ref } from "vue";
import en from "element-plus/es/locale/lang/en";
import zhCn from "element-plus/es/locale/lang/zh-cn";

const MESSAGES = {
  en: {
    brand: "City Brain", signIn: "Sign in", username: "Username", password: "Password", newPassword: "New password",
    mustChange: "Your password must be changed before you continue.", changePassword: "Change password",
    signOut: "Sign out", language: "Language", loading: "Loading…", home: "Home", devices: "Devices",
    registry: "Registry", codes: "City codes", video: "Video cases", dialer: "Call tasks", channel: "Access channels",
    webhooks: "Webhooks", iam: "Users & access", audit: "Audit log", noPage: "There is no console page for '{0}' yet; its API is at /api/v1/{0}.",
    notInstalled: "{0} is not installed on this hub yet.", you: "You", signedInAs: "Signed in as {0}. Scope: ",
    permsThrough: "{0} permissions through {1} role binding(s).", online: "online", offline: "offline",
    allDevices: "All devices →", codeApps: "Code applications", none: "none", registryApps: "Registry usage applications",
    pending: "{0} pending", openOf: "{0} open of {1}", recentAudit: "Recent audit entries", when: "When", actor: "Actor",
    action: "Action", timeZone: "Times in {0}", search: "Search", anyType: "any type", usageApps: "Usage applications",
    approve: "Approve", reject: "Reject", links: "Links", back: "← search", issuance: "Issuance applications",
    issued: "Issued codes", supervision: "Supervision", issue: "Issue", find: "Find", csv: "CSV export",
    cases: "Cases", statistics: "Statistics", history: "History", alerts: "Alerts", replay: "Replay",
    map: "Map", filter: "Filter", overdueOnly: "overdue only", anyStatus: "any status", noSnapshot: "no snapshot",
    verify: "Verify hash chain", older: "Older entries →", endpoints: "Endpoints", deliveries: "Deliveries",
    replayDead: "Replay dead", all: "all", users: "Users", bindings: "Role bindings", provision: "Provision a device",
    configDownload: "Download config", create: "Create", newUser: "New user", newBinding: "New role binding",
    newTask: "New call task", contacts: "Call list (CSV)", importContacts: "Import", rowErrors: "Rows refused",
    callDetail: "Call detail records", outcomes: "Call outcomes", never: "never", agoS: "{0} s ago",
    agoMin: "{0} min ago", agoH: "{0} h ago", total: "{0} in all", noData: "No data",
  },
  zh: {
    brand: "城市大脑", signIn: "登录", username: "用户名", password: "密码", newPassword: "新密码",
    mustChange: "继续之前必须修改密码。", changePassword: "修改密码", signOut: "退出", language: "语言",
    loading: "加载中…", home: "首页", devices: "设备", registry: "统一标识", codes: "城市码", video: "视频事件",
    dialer: "外呼任务", channel: "通道", webhooks: "Webhook 推送", iam: "用户与权限", audit: "审计日志",
    noPage: "“{0}”暂无控制台页面，接口位于 /api/v1/{0}。", notInstalled: "本中心尚未安装{0}。", you: "当前用户",
    signedInAs: "已登录：{0}。范围：", permsThrough: "{0} 项权限，来自 {1} 个角色绑定。", online: "在线",
    offline: "离线", allDevices: "全部设备 →", codeApps: "码申请", none: "无", registryApps: "标识使用申请",
    pending: "{0} 个待审", openOf: "{1} 个中 {0} 个未结", recentAudit: "最近审计记录", when: "时间", actor: "操作人",
    action: "操作", timeZone: "时间按 {0} 显示", search: "搜索", anyType: "任意类型", usageApps: "使用申请",
    approve: "批准", reject: "驳回", links: "关联", back: "← 返回搜索", issuance: "发码申请", issued: "已发的码",
    supervision: "监管", issue: "发码", find: "查找", csv: "导出 CSV", cases: "事件", statistics: "统计",
    history: "处置记录", alerts: "告警", replay: "重发", map: "地图", filter: "筛选", overdueOnly: "仅超时",
    anyStatus: "任意状态", noSnapshot: "无抓拍", verify: "校验哈希链", older: "更早记录 →", endpoints: "接收端",
    deliveries: "投递", replayDead: "重发失败投递", all: "全部", users: "用户", bindings: "角色绑定",
    provision: "登记设备", configDownload: "下载配置", create: "创建", newUser: "新用户", newBinding: "新角色绑定",
    newTask: "新外呼任务", contacts: "呼叫名单（CSV）", importContacts: "导入", rowErrors: "被拒的行",
    callDetail: "通话记录", outcomes: "呼叫结果", never: "从未", agoS: "{0} 秒前", agoMin: "{0} 分钟前",
    agoH: "{0} 小时前", total: "共 {0} 条", noData: "暂无数据",
  },
};

// Table headings, chart titles and workflow buttons are written in English in the views and looked up here
// by that text (an English text with no entry shows as itself).
Object.assign(MESSAGES.zh, {
  Device: "设备", Name: "名称", Kind: "类型", Org: "组织", State: "状态", Queue: "队列", Dropped: "丢弃",
  "Last heartbeat": "最近心跳", "Cameras / lists": "摄像头 / 名单", Identifier: "标识", Type: "类型", Status: "状态",
  Applicant: "申请人", Owner: "所属", Purpose: "用途", Fields: "字段", Valid: "有效期", Dept: "部门", Scene: "场景",
  Code: "码", Checks: "检查", Issued: "已发", Active: "有效", Scanned: "已扫", Failed: "失败", Zombies: "僵尸码",
  Site: "站点", Events: "事件数", "First seen": "首次发现", When: "时间", By: "操作人", Step: "步骤", Detail: "详情",
  Channel: "渠道", Target: "对象", Tries: "尝试", Error: "错误", Template: "模板", Created: "创建时间",
  Progress: "进度", Callee: "被叫", Attempt: "次数", Start: "开始", Seconds: "秒", Outcome: "结果", Reason: "原因",
  Row: "行", Column: "列", User: "用户", Phone: "电话", Role: "角色", "Granted by": "授权人", Expires: "到期",
  Seq: "序号", Actor: "操作人", Action: "操作", Application: "应用", "Grant TTL (s)": "授权时长（秒）",
  Terminals: "终端", Grant: "授权", Serial: "序列号", Via: "方式", Peer: "对端", Service: "服务", URL: "地址",
  "Old secret signs until": "旧密钥签名截止", Event: "事件", About: "关于", Endpoint: "接收端", "Last error": "最近错误",
  Direction: "方向", Rel: "关系", Category: "类别", Other: "对方", Confirm: "确认", "False positive": "误报",
  Dispatch: "派发", Acknowledge: "签收", Resolve: "办结", start: "开始", pause: "暂停", resume: "继续",
  cancel: "取消", "Actions on this page": "本页操作", "By scene": "按场景", "Cases by kind": "按类型",
  "Cases by hour of day (UTC)": "按小时（UTC）", "Issued and scanned per day (30 days)": "每日发码与扫码（30 天）",
  "Channel scenes": "通道场景", Grants: "授权",
});

export const lang = ref("en");
export const elementLocale = computed(() => (lang.value === "zh" ? zhCn : en));

// t("pending", 3): the message with {0}, {1}… filled in; an unknown key shows as itself (never "undefined").
export function t(key, ...args) {
  const s = MESSAGES[lang.value][key] ?? MESSAGES.en[key] ?? key;
  return s.replace(/\{(\d)\}/g, (_, i) => String(args[Number(i)] ?? ""));
}

const storeKey = (user) => "cb_lang:" + (user || "");

export function loadLang(user) {
  const saved = localStorage.getItem(storeKey(user));
  lang.value = saved === "zh" || saved === "en" ? saved : navigator.language.startsWith("zh") ? "zh" : "en";
  document.documentElement.lang = lang.value === "zh" ? "zh-CN" : "en";
}

export function setLang(user, value) {
  lang.value = value;
  localStorage.setItem(storeKey(user), value);
  document.documentElement.lang = value === "zh" ? "zh-CN" : "en";
}
